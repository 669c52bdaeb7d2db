"""The local RocksDB view of the state topic (the only package that imports rocksdict).

:mod:`~evstate.view.db` holds :class:`View` and the layout of what it stores;
``_codec`` the value codec; ``_rocks`` the low-level RocksDB options, bounded scans and
error translation.
"""

from evstate.view._codec import Change, decode_value, encode_value
from evstate.view.db import View

__all__ = ["Change", "View", "decode_value", "encode_value"]
