import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from weft.money.v1 import money_pb2 as _money_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AuthorizationStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUTHORIZATION_STATUS_UNSPECIFIED: _ClassVar[AuthorizationStatus]
    AUTHORIZATION_STATUS_AUTHORIZED: _ClassVar[AuthorizationStatus]
    AUTHORIZATION_STATUS_DECLINED: _ClassVar[AuthorizationStatus]
    AUTHORIZATION_STATUS_CAPTURED: _ClassVar[AuthorizationStatus]
    AUTHORIZATION_STATUS_VOIDED: _ClassVar[AuthorizationStatus]

class DeclineReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECLINE_REASON_UNSPECIFIED: _ClassVar[DeclineReason]
    DECLINE_REASON_INSUFFICIENT_FUNDS: _ClassVar[DeclineReason]
    DECLINE_REASON_CURRENCY_MISMATCH: _ClassVar[DeclineReason]

class EntryKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENTRY_KIND_UNSPECIFIED: _ClassVar[EntryKind]
    ENTRY_KIND_DEPOSIT: _ClassVar[EntryKind]
    ENTRY_KIND_HOLD: _ClassVar[EntryKind]
    ENTRY_KIND_CAPTURE: _ClassVar[EntryKind]
    ENTRY_KIND_VOID: _ClassVar[EntryKind]
    ENTRY_KIND_REFUND: _ClassVar[EntryKind]
AUTHORIZATION_STATUS_UNSPECIFIED: AuthorizationStatus
AUTHORIZATION_STATUS_AUTHORIZED: AuthorizationStatus
AUTHORIZATION_STATUS_DECLINED: AuthorizationStatus
AUTHORIZATION_STATUS_CAPTURED: AuthorizationStatus
AUTHORIZATION_STATUS_VOIDED: AuthorizationStatus
DECLINE_REASON_UNSPECIFIED: DeclineReason
DECLINE_REASON_INSUFFICIENT_FUNDS: DeclineReason
DECLINE_REASON_CURRENCY_MISMATCH: DeclineReason
ENTRY_KIND_UNSPECIFIED: EntryKind
ENTRY_KIND_DEPOSIT: EntryKind
ENTRY_KIND_HOLD: EntryKind
ENTRY_KIND_CAPTURE: EntryKind
ENTRY_KIND_VOID: EntryKind
ENTRY_KIND_REFUND: EntryKind

class Account(_message.Message):
    __slots__ = ("account_id", "owner", "currency_code", "balance", "held", "available", "credit_limit", "create_time")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_CODE_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    CREDIT_LIMIT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    owner: str
    currency_code: str
    balance: _money_pb2.Money
    held: _money_pb2.Money
    available: _money_pb2.Money
    credit_limit: _money_pb2.Money
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, account_id: _Optional[str] = ..., owner: _Optional[str] = ..., currency_code: _Optional[str] = ..., balance: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., held: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., available: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., credit_limit: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Authorization(_message.Message):
    __slots__ = ("authorization_id", "account_id", "reference", "amount", "captured", "refunded", "status", "decline_reason", "create_time", "update_time")
    AUTHORIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CAPTURED_FIELD_NUMBER: _ClassVar[int]
    REFUNDED_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DECLINE_REASON_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    authorization_id: str
    account_id: str
    reference: str
    amount: _money_pb2.Money
    captured: _money_pb2.Money
    refunded: _money_pb2.Money
    status: AuthorizationStatus
    decline_reason: DeclineReason
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, authorization_id: _Optional[str] = ..., account_id: _Optional[str] = ..., reference: _Optional[str] = ..., amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., captured: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., refunded: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., status: _Optional[_Union[AuthorizationStatus, str]] = ..., decline_reason: _Optional[_Union[DeclineReason, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class LedgerEntry(_message.Message):
    __slots__ = ("entry_id", "transaction_id", "account_id", "amount", "kind", "authorization_id", "create_time")
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    entry_id: str
    transaction_id: str
    account_id: str
    amount: _money_pb2.Money
    kind: EntryKind
    authorization_id: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, entry_id: _Optional[str] = ..., transaction_id: _Optional[str] = ..., account_id: _Optional[str] = ..., amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., kind: _Optional[_Union[EntryKind, str]] = ..., authorization_id: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CurrencyTotal(_message.Message):
    __slots__ = ("currency_code", "sum_minor", "entry_count")
    CURRENCY_CODE_FIELD_NUMBER: _ClassVar[int]
    SUM_MINOR_FIELD_NUMBER: _ClassVar[int]
    ENTRY_COUNT_FIELD_NUMBER: _ClassVar[int]
    currency_code: str
    sum_minor: int
    entry_count: int
    def __init__(self, currency_code: _Optional[str] = ..., sum_minor: _Optional[int] = ..., entry_count: _Optional[int] = ...) -> None: ...

class OpenAccountRequest(_message.Message):
    __slots__ = ("idempotency_key", "owner", "currency_code", "credit_limit_minor")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_CODE_FIELD_NUMBER: _ClassVar[int]
    CREDIT_LIMIT_MINOR_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    owner: str
    currency_code: str
    credit_limit_minor: int
    def __init__(self, idempotency_key: _Optional[str] = ..., owner: _Optional[str] = ..., currency_code: _Optional[str] = ..., credit_limit_minor: _Optional[int] = ...) -> None: ...

class OpenAccountResponse(_message.Message):
    __slots__ = ("account",)
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    account: Account
    def __init__(self, account: _Optional[_Union[Account, _Mapping]] = ...) -> None: ...

class GetAccountRequest(_message.Message):
    __slots__ = ("account_id",)
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    def __init__(self, account_id: _Optional[str] = ...) -> None: ...

class GetAccountResponse(_message.Message):
    __slots__ = ("account",)
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    account: Account
    def __init__(self, account: _Optional[_Union[Account, _Mapping]] = ...) -> None: ...

class DepositRequest(_message.Message):
    __slots__ = ("idempotency_key", "account_id", "amount")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    account_id: str
    amount: _money_pb2.Money
    def __init__(self, idempotency_key: _Optional[str] = ..., account_id: _Optional[str] = ..., amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ...) -> None: ...

class DepositResponse(_message.Message):
    __slots__ = ("account",)
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    account: Account
    def __init__(self, account: _Optional[_Union[Account, _Mapping]] = ...) -> None: ...

class AuthorizeRequest(_message.Message):
    __slots__ = ("idempotency_key", "account_id", "amount", "reference")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    account_id: str
    amount: _money_pb2.Money
    reference: str
    def __init__(self, idempotency_key: _Optional[str] = ..., account_id: _Optional[str] = ..., amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., reference: _Optional[str] = ...) -> None: ...

class AuthorizeResponse(_message.Message):
    __slots__ = ("authorization",)
    AUTHORIZATION_FIELD_NUMBER: _ClassVar[int]
    authorization: Authorization
    def __init__(self, authorization: _Optional[_Union[Authorization, _Mapping]] = ...) -> None: ...

class CaptureRequest(_message.Message):
    __slots__ = ("idempotency_key", "authorization_id", "payee_account_id")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    PAYEE_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    authorization_id: str
    payee_account_id: str
    def __init__(self, idempotency_key: _Optional[str] = ..., authorization_id: _Optional[str] = ..., payee_account_id: _Optional[str] = ...) -> None: ...

class CaptureResponse(_message.Message):
    __slots__ = ("authorization",)
    AUTHORIZATION_FIELD_NUMBER: _ClassVar[int]
    authorization: Authorization
    def __init__(self, authorization: _Optional[_Union[Authorization, _Mapping]] = ...) -> None: ...

class VoidRequest(_message.Message):
    __slots__ = ("idempotency_key", "authorization_id")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    authorization_id: str
    def __init__(self, idempotency_key: _Optional[str] = ..., authorization_id: _Optional[str] = ...) -> None: ...

class VoidResponse(_message.Message):
    __slots__ = ("authorization",)
    AUTHORIZATION_FIELD_NUMBER: _ClassVar[int]
    authorization: Authorization
    def __init__(self, authorization: _Optional[_Union[Authorization, _Mapping]] = ...) -> None: ...

class RefundRequest(_message.Message):
    __slots__ = ("idempotency_key", "authorization_id", "amount")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    authorization_id: str
    amount: _money_pb2.Money
    def __init__(self, idempotency_key: _Optional[str] = ..., authorization_id: _Optional[str] = ..., amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ...) -> None: ...

class RefundResponse(_message.Message):
    __slots__ = ("authorization",)
    AUTHORIZATION_FIELD_NUMBER: _ClassVar[int]
    authorization: Authorization
    def __init__(self, authorization: _Optional[_Union[Authorization, _Mapping]] = ...) -> None: ...

class GetAuthorizationRequest(_message.Message):
    __slots__ = ("authorization_id",)
    AUTHORIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    authorization_id: str
    def __init__(self, authorization_id: _Optional[str] = ...) -> None: ...

class GetAuthorizationResponse(_message.Message):
    __slots__ = ("authorization",)
    AUTHORIZATION_FIELD_NUMBER: _ClassVar[int]
    authorization: Authorization
    def __init__(self, authorization: _Optional[_Union[Authorization, _Mapping]] = ...) -> None: ...

class ListLedgerEntriesRequest(_message.Message):
    __slots__ = ("account_id", "page_size", "page_token")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    page_size: int
    page_token: str
    def __init__(self, account_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListLedgerEntriesResponse(_message.Message):
    __slots__ = ("entries", "next_page_token")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[LedgerEntry]
    next_page_token: str
    def __init__(self, entries: _Optional[_Iterable[_Union[LedgerEntry, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetLedgerTotalsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetLedgerTotalsResponse(_message.Message):
    __slots__ = ("totals",)
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    totals: _containers.RepeatedCompositeFieldContainer[CurrencyTotal]
    def __init__(self, totals: _Optional[_Iterable[_Union[CurrencyTotal, _Mapping]]] = ...) -> None: ...
