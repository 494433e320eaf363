"""The emulator's offset pagination: every item once, in order, whatever the page size and token style."""

from __future__ import annotations

import pytest

from mlflow_gcp.emulator.core.errors import GcpError
from mlflow_gcp.emulator.core.paging import page


@pytest.mark.parametrize("opaque", [False, True])
@pytest.mark.parametrize("size", [1, 2, 3, 7, 10])
def test_pages_cover_every_item_once(opaque: bool, size: int) -> None:
    items = list(range(7))
    seen: list[int] = []
    args: dict[str, str] = {"pageSize": str(size)}
    pages = 0
    while True:
        chunk, token = page(items, args, default=100, maximum=5, opaque=opaque)
        seen += chunk
        pages += 1
        if not token:
            break
        assert token.isdigit() != opaque
        args = {"pageSize": str(size), "pageToken": token}
    assert seen == items
    assert pages == -(-7 // min(size, 5))


def test_default_size_and_named_size_argument() -> None:
    assert page(list(range(30)), {}, default=20, maximum=100) == (list(range(20)), "20")
    assert page(list(range(3)), {"maxResults": "2"}, default=500, maximum=500, size_arg="maxResults")[1] == "2"


@pytest.mark.parametrize("args", [{"pageSize": "x"}, {"pageSize": "-1"}, {"pageToken": "%%"}])
def test_bad_arguments_are_invalid_argument(args: dict[str, str]) -> None:
    with pytest.raises(GcpError) as err:
        page([1, 2], args, default=1, maximum=1, opaque=True)
    assert err.value.code == 400
