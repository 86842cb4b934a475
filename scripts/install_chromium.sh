#!/bin/sh
# The browser the dashboard's tests drive (tests/test_dashboard.py): Debian's Chromium, since no
# browser download works here. Installed when missing and we may (root with apt-get); otherwise
# those tests are skipped, saying why.
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's chromium for the browser tests..."
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/tmp/wmq-chromium.log 2>&1 \
        || echo "could not install chromium (see /tmp/wmq-chromium.log): the browser tests will be skipped"
else
    echo "no chromium and no way to install it: the browser tests will be skipped"
fi
exit 0
