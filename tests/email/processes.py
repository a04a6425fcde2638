"""Real processes for the e-mail end-to-end tests.

A ``lienthong-hub serve --smtp-port 0`` with its e-mail gateway configured in
``hub.toml``'s ``[email]`` table (the relay: a :class:`~tests.email.servers.ThreadedRelay`
in the test process, delivering into Dovecot by IMAP APPEND), offices initialised with
``lienthong-node init`` -- e-mail ones with ``--transport email|fallback --smtp --imap``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.e2e.harness import Hub, Node

GATEWAY = "lienthong@hub.lienthong.test"


class MailHub(Hub):
    """The e2e harness's hub, with the e-mail gateway on and its SMTP port known."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.smtp_port = 0

    def configure(self, relay_port: int, **extra: Any) -> MailHub:
        email: dict[str, Any] = {
            "address": GATEWAY,
            "name": "Lienthong — Văn phòng Tỉnh ủy",
            "relay_host": "127.0.0.1",
            "relay_port": relay_port,
            "relay_tls": "none",
            "interval": 0.3,
            "retry_base": 0.5,
            "retry_max": 2.0,
        }
        email.update(extra)
        lines = ["", "[email]"] + [
            f"{k} = {json.dumps(v, ensure_ascii=False)}" for k, v in email.items()
        ]
        with (self.data / "hub.toml").open("a", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
        return self

    def start(self, port: int = 0, timeout: float = 60, **settings: str) -> MailHub:
        smtp = str(self.smtp_port)  # again on the same port after a restart
        self._serve(["--port", str(port), "--smtp-port", smtp], timeout, settings)
        assert self.smtp_port, f"the gateway did not start: {self.lines[-5:]}"
        return self

    def _on_line(self, line: dict[str, Any]) -> None:
        if line.get("event") == "smtp_listening":
            self.smtp_port = int(line["port"])

    def token_for_email(
        self,
        code: str,
        name: str,
        *,
        email: str,
        parent: str | None = None,
        transports: tuple[str, ...] = ("email",),
    ) -> str:
        doc: dict[str, Any] = {
            "organ": code,
            "name": name,
            "level": "commune",
            "email": email,
            "transports": list(transports),
        }
        if parent:
            doc["parent"] = parent
        return str(self._http("POST", "/v1/admin/enrolments", doc, self._admin_token())["token"])

    def refusals(self) -> list[str]:
        """Codes of the messages the gateway refused, as the hub logged them."""
        return [
            str(line.get("code"))
            for line in list(self.lines)
            if line.get("event") == "mail refused"
        ]


def mail_node_args(
    *,
    transport: str,
    address: str,
    smtp_port: int,
    imap_port: int,
    password_file: Path,
) -> list[str]:
    user = address.replace("@", "%40")
    return [
        "--transport",
        transport,
        "--email",
        address,
        "--hub-email",
        GATEWAY,
        "--smtp",
        f"smtp://127.0.0.1:{smtp_port}",
        "--imap",
        f"imap://{user}@127.0.0.1:{imap_port}",
        "--mail-password-file",
        str(password_file),
    ]


def set_config(node: Node, **values: Any) -> None:
    """Edit a node's config.json (e.g. point its hub URL at a port nobody listens on)."""
    path = node.home / "config.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    for key, value in values.items():
        if key.startswith("email."):
            doc["extra"]["email"][key.split(".", 1)[1]] = value
        else:
            doc[key] = value
    path.write_text(json.dumps(doc, ensure_ascii=False, indent=2), encoding="utf-8")
