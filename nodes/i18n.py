"""Messages of the node agent in English and Vietnamese.

A small catalogue, not gettext: the node has a few dozen messages and clerks read them in
Vietnamese, so every message is written in both languages side by side, where a missing
translation is obvious in review.  :func:`language` picks Vietnamese when ``LANG`` (or
``LC_ALL`` / ``LC_MESSAGES``, which take precedence, as in POSIX) starts with ``vi``.

Error codes are stable identifiers and are printed untranslated, followed by a one-line
explanation in the chosen language (:func:`explain`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Final

from protocol.errors import CODES

from .errors import NODE_CODES

EN: Final = "en"
VI: Final = "vi"

#: key -> (English, Vietnamese).  Placeholders use str.format names.
MESSAGES: Final[Mapping[str, tuple[str, str]]] = {
    # --- init ------------------------------------------------------------------------
    "init.done": (
        "Office {organ} enrolled at {hub}.",
        "Đã đăng ký đơn vị {organ} với hub {hub}.",
    ),
    "init.keys": ("Key algorithms: {sign} / {enc}", "Thuật toán khóa: {sign} / {enc}"),
    "init.authority": (
        "Directory authority pinned: {fingerprint}",
        "Đã ghim khóa cơ quan quản lý danh bạ: {fingerprint}",
    ),
    "init.hybrid_retry": (
        "The hub requires hybrid post-quantum keys; generating them.",
        "Hub yêu cầu khóa lai hậu lượng tử; đang tạo khóa mới.",
    ),
    "passphrase.prompt": ("Keystore passphrase", "Mật khẩu kho khóa"),
    "passphrase.confirm": ("Repeat the passphrase", "Nhập lại mật khẩu"),
    # --- send ------------------------------------------------------------------------
    "send.queued": (
        "Packet {packet} sealed to {count} recipient(s) and queued.",
        "Gói {packet} đã niêm phong cho {count} nơi nhận và đưa vào hàng đợi.",
    ),
    "send.accepted": (
        "Packet {packet} accepted by the hub (log index {index}).",
        "Hub đã tiếp nhận gói {packet} (chỉ mục nhật ký {index}).",
    ),
    "send.accepted_noreceipt": (
        "Packet {packet} accepted by the hub.",
        "Hub đã tiếp nhận gói {packet}.",
    ),
    "send.waiting": (
        "The hub cannot be reached: packet {packet} waits in the outbox.",
        "Không kết nối được hub: gói {packet} chờ trong hộp thư đi.",
    ),
    "send.number": ("Number: {reference}", "Số, ký hiệu: {reference}"),
    "send.failed": (
        "Packet {packet} was refused: {code}: {detail}",
        "Gói {packet} bị từ chối: {code}: {detail}",
    ),
    # --- sync / run --------------------------------------------------------------------
    "sync.summary": (
        "Sent {sent}, queued {queued}, received {received}, refused {refused}, receipts {receipts}.",
        "Đã gửi {sent}, đang chờ {queued}, đã nhận {received}, từ chối {refused}, biên nhận {receipts}.",
    ),
    "sync.received": (
        "Received {packet} from {sender}: {subject}",
        "Đã nhận {packet} từ {sender}: {subject}",
    ),
    "sync.refused": (
        "Refused {packet} from {sender}: {code}: {detail}",
        "Từ chối {packet} từ {sender}: {code}: {detail}",
    ),
    "sync.receipt": (
        "Receipt {status} ({label}) from {organ} for {packet}",
        "Biên nhận {status} ({label}) của {organ} cho gói {packet}",
    ),
    "sync.receipt_invalid": (
        "Receipt for {packet} from {organ} does not verify: {code}",
        "Biên nhận gói {packet} của {organ} không hợp lệ: {code}",
    ),
    "sync.recall": (
        "{sender} asks to recall {packet}: {reason}",
        "{sender} yêu cầu thu hồi {packet}: {reason}",
    ),
    "sync.checkpoint_bad": (
        "The hub's log checkpoint does not verify: {code}: {detail}",
        "Điểm kiểm tra nhật ký của hub không hợp lệ: {code}: {detail}",
    ),
    "alarm.raised": (
        "ALARM: {code}: {detail}",
        "CẢNH BÁO: {code}: {detail}",
    ),
    "run.started": (
        "Agent of {organ} running against {hub} (Ctrl-C to stop).",
        "Tác tử của {organ} đang chạy với hub {hub} (Ctrl-C để dừng).",
    ),
    "run.unreachable": (
        "Hub unreachable ({detail}); retrying in {delay:.1f} s.",
        "Không kết nối được hub ({detail}); thử lại sau {delay:.1f} giây.",
    ),
    "run.stopped": ("Agent stopped.", "Tác tử đã dừng."),
    "watch.sent": (
        "Watch folder {name}: packet {packet}",
        "Thư mục gửi {name}: gói {packet}",
    ),
    "watch.failed": (
        "Watch folder {name} refused: {code}: {detail}",
        "Thư mục gửi {name} bị từ chối: {code}: {detail}",
    ),
    # --- receipts ------------------------------------------------------------------------
    "receipt.queued": (
        "Receipt {status} ({label}) for {packet} signed.",
        "Đã ký biên nhận {status} ({label}) cho gói {packet}.",
    ),
    "receipt.posted": ("Delivered to the hub.", "Đã gửi lên hub."),
    "receipt.waiting": (
        "The hub cannot be reached: the receipt goes on the next sync.",
        "Không kết nối được hub: biên nhận sẽ được gửi ở lần đồng bộ sau.",
    ),
    "register.done": (
        "Registered {packet} as incoming number {number}/{year}.",
        "Đã vào sổ {packet} với số đến {number}/{year}.",
    ),
    "recall.sent": (
        "Recall of {packet} requested from {count} recipient(s).",
        "Đã yêu cầu {count} nơi nhận thu hồi gói {packet}.",
    ),
    "recall.accepted": (
        "Recall accepted: {packet} removed from the inbox.",
        "Đồng ý thu hồi: đã gỡ {packet} khỏi hộp thư đến.",
    ),
    # --- tables --------------------------------------------------------------------------
    "inbox.title": ("Inbox of {organ}", "Hộp thư đến của {organ}"),
    "inbox.empty": ("The inbox is empty.", "Hộp thư đến trống."),
    "status.title": ("Status of {packet}", "Tình trạng gói {packet}"),
    "status.offline": (
        "The hub cannot be reached: showing the receipts collected so far.",
        "Không kết nối được hub: hiển thị các biên nhận đã thu thập.",
    ),
    "col.packet": ("Packet", "Gói"),
    "col.received": ("Received", "Ngày đến"),
    "col.from": ("From", "Nơi gửi"),
    "col.reference": ("Number", "Số, ký hiệu"),
    "col.subject": ("Subject", "Trích yếu"),
    "col.urgency": ("Urgency", "Độ khẩn"),
    "col.state": ("State", "Trạng thái"),
    "col.incoming": ("In. no.", "Số đến"),
    "col.recipient": ("Recipient", "Nơi nhận"),
    "col.history": ("History", "Diễn biến"),
    "col.verified": ("Signatures", "Chữ ký"),
    "col.files": ("Files", "Tệp"),
    "verified.ok": ("all verified", "đã xác minh"),
    "verified.bad": ("INVALID", "KHÔNG HỢP LỆ"),
    "error.prefix": ("error", "lỗi"),
}

#: Vietnamese one-line explanations of the codes a clerk meets most; others fall back
#: to the protocol's English meaning.
VI_CODES: Final[Mapping[str, str]] = {
    "hub_unreachable": "Không kết nối được hub.",
    "keystore_missing": "Chưa có kho khóa: chạy `lienthong-node init` trước.",
    "keystore_damaged": "Kho khóa bị hỏng.",
    "keystore_permissions": "Kho khóa phải chỉ chủ sở hữu đọc được (chmod 600).",
    "passphrase_wrong": "Sai mật khẩu, hoặc kho khóa đã bị sửa.",
    "passphrase_missing": "Cần mật khẩu: đặt LIENTHONG_PASSPHRASE hoặc dùng --passphrase-file.",
    "not_initialised": "Thư mục này chưa được khởi tạo.",
    "already_initialised": "Thư mục này đã được khởi tạo.",
    "packet_not_found": "Không tìm thấy gói tin này ở đơn vị.",
    "signature_invalid": "Chữ ký số không hợp lệ.",
    "body_digest_mismatch": "Nội dung gói tin đã bị thay đổi (mã băm không khớp).",
    "chunk_tag_invalid": "Một phần nội dung gói tin đã bị thay đổi.",
    "truncated_body": "Nội dung gói tin bị cắt cụt.",
    "cek_commitment_mismatch": "Khóa nội dung không khớp cam kết trong phong bì.",
    "directory_signature_invalid": "Mục danh bạ không có chữ ký hợp lệ của cơ quan quản lý.",
    "transition_invalid": "Không thể chuyển sang trạng thái này.",
    "reason_required": "Cần nêu lý do.",
    "route_not_allowed": "Tuyến gửi này không được phép.",
    "secrecy_refused": "Hệ thống không chuyển tài liệu có độ mật này.",
    "token_invalid": "Phiên làm việc hết hạn hoặc khóa đã bị thu hồi.",
    "key_revoked": "Khóa đã bị thu hồi.",
    "organ_unknown": "Không có đơn vị này trong danh bạ.",
    "recipient_unknown": "Nơi nhận không có trong danh bạ.",
    "enrolment_token_invalid": "Mã đăng ký không đúng, đã hết hạn hoặc đã dùng.",
    "register_number_taken": "Số này đã được dùng trong sổ.",
    "hub_key_mismatch": "Khóa của hub khác với khóa đã ghim khi đăng ký.",
    "hub_certificate_invalid": (
        "Chứng chỉ TLS của hub không được xác thực bởi CA tin cậy "
        "(ca_file trong config.json, nếu không có thì CA của hệ thống)."
    ),
}


def language() -> str:
    """``vi`` when the locale asks for Vietnamese, else ``en``."""
    for var in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = os.environ.get(var)
        if value:
            return VI if value.lower().startswith("vi") else EN
    return EN


def t(key: str, lang: str | None = None, **values: object) -> str:
    """The message ``key`` in ``lang`` (default: :func:`language`), formatted."""
    en, vi = MESSAGES[key]
    text = vi if (lang or language()) == VI else en
    return text.format(**values) if values else text


def explain(code: str, detail: str | None = None, lang: str | None = None) -> str:
    """One line explaining an error code: the detail given, else the catalogue's meaning."""
    if (lang or language()) == VI and code in VI_CODES:
        base = VI_CODES[code]
        return base if not detail or detail == _meaning(code) else f"{base} ({detail})"
    if detail:
        return detail
    return _meaning(code) or code


def _meaning(code: str) -> str | None:
    known = CODES.get(code)
    if known is not None:
        return known.meaning
    return NODE_CODES.get(code)
