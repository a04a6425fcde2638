"""Document types (loại văn bản): the abbreviation in a notation and the type's name.

One table for the registers (``tên loại``) and the edXML bridge (``TypeName``).  The
Party's abbreviations as DOMAIN.md lists them (``QĐ`` is quyết định and quy định alike),
and the state types clerks' systems exchange with Party offices.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

DOC_TYPES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "NQ": "Nghị quyết",
        "QĐ": "Quyết định",
        "CT": "Chỉ thị",
        "KL": "Kết luận",
        "TB": "Thông báo",
        "BC": "Báo cáo",
        "KH": "Kế hoạch",
        "CTr": "Chương trình",
        "TTr": "Tờ trình",
        "HD": "Hướng dẫn",
        "CV": "Công văn",
        "BB": "Biên bản",
        "ĐA": "Đề án",
        "PA": "Phương án",
        "GM": "Giấy mời",
        "QC": "Quy chế",
        "TT": "Thông tư",
        "NĐ": "Nghị định",
        "CĐ": "Công điện",
        "GGT": "Giấy giới thiệu",
    }
)


def type_name(doc_type: str | None) -> str:
    """The name of a type abbreviation; an unknown one is its own name."""
    return DOC_TYPES.get(doc_type or "", doc_type or "")
