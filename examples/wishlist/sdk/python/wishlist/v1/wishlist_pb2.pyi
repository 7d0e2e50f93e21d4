import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from weft.money.v1 import money_pb2 as _money_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WishlistItem(_message.Message):
    __slots__ = ("sku", "name", "unit_price", "add_time")
    SKU_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    UNIT_PRICE_FIELD_NUMBER: _ClassVar[int]
    ADD_TIME_FIELD_NUMBER: _ClassVar[int]
    sku: str
    name: str
    unit_price: _money_pb2.Money
    add_time: _timestamp_pb2.Timestamp
    def __init__(self, sku: _Optional[str] = ..., name: _Optional[str] = ..., unit_price: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., add_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AddItemRequest(_message.Message):
    __slots__ = ("customer_id", "sku")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    SKU_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    sku: str
    def __init__(self, customer_id: _Optional[str] = ..., sku: _Optional[str] = ...) -> None: ...

class AddItemResponse(_message.Message):
    __slots__ = ("item", "added")
    ITEM_FIELD_NUMBER: _ClassVar[int]
    ADDED_FIELD_NUMBER: _ClassVar[int]
    item: WishlistItem
    added: bool
    def __init__(self, item: _Optional[_Union[WishlistItem, _Mapping]] = ..., added: bool = ...) -> None: ...

class RemoveItemRequest(_message.Message):
    __slots__ = ("customer_id", "sku")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    SKU_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    sku: str
    def __init__(self, customer_id: _Optional[str] = ..., sku: _Optional[str] = ...) -> None: ...

class RemoveItemResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: bool
    def __init__(self, removed: bool = ...) -> None: ...

class ListItemsRequest(_message.Message):
    __slots__ = ("customer_id",)
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    def __init__(self, customer_id: _Optional[str] = ...) -> None: ...

class ListItemsResponse(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[WishlistItem]
    def __init__(self, items: _Optional[_Iterable[_Union[WishlistItem, _Mapping]]] = ...) -> None: ...
