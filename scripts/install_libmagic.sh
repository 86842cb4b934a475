#!/bin/sh
# libmagic, which python-magic loads when neonize is imported (the WhatsApp transport and its
# tests; the image installs it too: Dockerfile). Installed when missing and we may (root with
# apt-get); otherwise said, and the neonize tests fail at import with python-magic's reason.
python3 -c "import ctypes.util, sys; sys.exit(0 if ctypes.util.find_library('magic') else 1)" && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's libmagic1 for neonize..."
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libmagic1) >/tmp/wmq-libmagic.log 2>&1 \
        || echo "could not install libmagic1 (see /tmp/wmq-libmagic.log)"
else
    echo "no libmagic and no way to install it: install libmagic1 (Debian) or libmagic (others) for neonize"
fi
exit 0
