#!/usr/bin/env bash
# Make sure Dovecot's IMAP server (Debian's dovecot-imapd) is installed for the e-mail tests.
# Installs the package only; the tests start their own unprivileged instance with a
# generated configuration (tests/email/servers.py), never the system service -- so the
# package's own service is kept from starting during the installation.
set -euo pipefail

if command -v dovecot >/dev/null 2>&1 || [ -x /usr/sbin/dovecot ]; then
  exit 0
fi

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }

echo "Dovecot is not installed: installing dovecot-imapd from Debian's packages" >&2
# policy-rc.d answering 101 tells the maintainer scripts not to start any service.
policy=/usr/sbin/policy-rc.d
added_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
  as_root chmod 755 "$policy"
  added_policy=1
fi
cleanup() { if [ "$added_policy" = 1 ]; then as_root rm -f "$policy"; fi; }
trap cleanup EXIT

as_root apt-get update -qq
DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
  dovecot-imapd >/dev/null

if command -v dovecot >/dev/null 2>&1 || [ -x /usr/sbin/dovecot ]; then
  exit 0
fi
echo "dovecot-imapd did not install a dovecot binary" >&2
exit 1
