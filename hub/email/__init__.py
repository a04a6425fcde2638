"""The hub's e-mail gateway: the same sealed packets and receipts over SMTP.

Some offices have only a mailbox, and sometimes HTTPS to the hub is down.  The gateway
carries exactly what HTTPS carries -- never a plaintext document -- in the message format
of :mod:`protocol.mail`:

* :mod:`.inbound` -- an aiosmtpd server in the hub's own event loop (``serve
  --smtp-port``).  Each message is parsed strictly and then submitted through the very
  functions the HTTP API calls (:mod:`hub.packets`, :mod:`hub.deliveries`), with the
  envelope's or receipt's signer as the caller: there is no bearer token, the signature
  is the authentication.  Refusals are SMTP replies carrying the stable error code.
* :mod:`.outbound` -- a background task that sends, through a configured relay with
  aiosmtplib, what e-mail offices have in their hub mailbox: envelopes with their body,
  relayed receipts, hub receipts.  One row per (item, recipient) in ``email_messages``
  makes it idempotent; every attempt is an ``email`` audit event.
* :mod:`.mime` -- the hub's side of the format: which bytes go into each message.
* :mod:`.settings` -- the ``[email]`` table of ``hub.toml`` (``LIENTHONG_EMAIL__*``).
* :mod:`.app` -- wiring into the application's ``cleanup_ctx``.
"""
