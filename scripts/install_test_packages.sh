#!/bin/sh
# The system packages the tests need that pip cannot bring, installed when missing and we may
# (root with apt-get); otherwise said, and what needs them fails or is skipped saying why:
# - libmagic1: python-magic loads it when neonize is imported (the WhatsApp transport and its
#   tests; the image installs it too: Dockerfile);
# - chromium: the browser the dashboard's tests drive (tests/test_dashboard.py): Debian's, since
#   no browser download works here.
missing=""
python3 -c "import ctypes.util, sys; sys.exit(0 if ctypes.util.find_library('magic') else 1)" || missing=" libmagic1"
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's$missing for the tests..."
    # shellcheck disable=SC2086 # one word per package
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing) >/tmp/wmq-packages.log 2>&1 \
        || echo "could not install$missing (see /tmp/wmq-packages.log): the tests that need them will fail or be skipped"
else
    echo "missing$missing and no way to install them (root with apt-get): the tests that need them will fail or be skipped"
fi
exit 0
