from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Channel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANNEL_UNSPECIFIED: _ClassVar[Channel]
    RAIL: _ClassVar[Channel]
    AIRLINE: _ClassVar[Channel]
    HOTEL: _ClassVar[Channel]
    SCHOOL: _ClassVar[Channel]
    SHIP: _ClassVar[Channel]
    TRAVEL: _ClassVar[Channel]
    LEISURE: _ClassVar[Channel]
    INSURANCE: _ClassVar[Channel]
    REAL_ESTATE: _ClassVar[Channel]
    VEHICLE: _ClassVar[Channel]
    OFFICE_RENTAL: _ClassVar[Channel]

class IdType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ID_TYPE_UNSPECIFIED: _ClassVar[IdType]
    RESIDENT_ID: _ClassVar[IdType]
    PASSPORT: _ClassVar[IdType]
    HK_MACAO_PERMIT: _ClassVar[IdType]
    TAIWAN_PERMIT: _ClassVar[IdType]
    FOREIGN_PERMANENT_RESIDENT: _ClassVar[IdType]

class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_UNSPECIFIED: _ClassVar[Decision]
    ALLOW: _ClassVar[Decision]
    DENY: _ClassVar[Decision]
    REVIEW: _ClassVar[Decision]

class ListType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LIST_TYPE_UNSPECIFIED: _ClassVar[ListType]
    SHIXIN: _ClassVar[ListType]
    XIANGAO: _ClassVar[ListType]

class EntryStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENTRY_STATUS_UNSPECIFIED: _ClassVar[EntryStatus]
    ACTIVE: _ClassVar[EntryStatus]
    SUSPENDED: _ClassVar[EntryStatus]
    EXPIRED: _ClassVar[EntryStatus]

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_DEBTOR: _ClassVar[Role]
    ROLE_LEGAL_REPRESENTATIVE: _ClassVar[Role]
    ROLE_PRINCIPAL: _ClassVar[Role]
    ROLE_ACTUAL_CONTROLLER: _ClassVar[Role]
    ROLE_RESPONSIBLE_PERSON: _ClassVar[Role]

class RailSeat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RAIL_SEAT_UNSPECIFIED: _ClassVar[RailSeat]
    RAIL_SEAT_BUSINESS: _ClassVar[RailSeat]
    RAIL_SEAT_PREMIER: _ClassVar[RailSeat]
    RAIL_SEAT_FIRST_CLASS: _ClassVar[RailSeat]
    RAIL_SEAT_SECOND_CLASS: _ClassVar[RailSeat]
    RAIL_SEAT_FIRST_CLASS_SLEEPER: _ClassVar[RailSeat]
    RAIL_SEAT_SECOND_CLASS_SLEEPER: _ClassVar[RailSeat]
    RAIL_SEAT_DELUXE_SOFT_SLEEPER: _ClassVar[RailSeat]
    RAIL_SEAT_SOFT_SLEEPER: _ClassVar[RailSeat]
    RAIL_SEAT_HARD_SLEEPER: _ClassVar[RailSeat]
    RAIL_SEAT_SOFT_SEAT: _ClassVar[RailSeat]
    RAIL_SEAT_HARD_SEAT: _ClassVar[RailSeat]
    RAIL_SEAT_NO_SEAT: _ClassVar[RailSeat]

class TravelService(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRAVEL_SERVICE_UNSPECIFIED: _ClassVar[TravelService]
    TRAVEL_OUTBOUND_GROUP_TOUR: _ClassVar[TravelService]
    TRAVEL_OUTBOUND_RELATED: _ClassVar[TravelService]
    TRAVEL_RATED_RESORT: _ClassVar[TravelService]
    TRAVEL_DOMESTIC: _ClassVar[TravelService]

class LeisureVenue(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LEISURE_VENUE_UNSPECIFIED: _ClassVar[LeisureVenue]
    LEISURE_NIGHTCLUB: _ClassVar[LeisureVenue]
    LEISURE_GOLF: _ClassVar[LeisureVenue]
    LEISURE_OTHER_HIGH_CONSUMPTION: _ClassVar[LeisureVenue]
    LEISURE_ORDINARY: _ClassVar[LeisureVenue]

class RealEstateKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REAL_ESTATE_KIND_UNSPECIFIED: _ClassVar[RealEstateKind]
    REAL_ESTATE_PROPERTY_PURCHASE: _ClassVar[RealEstateKind]
    REAL_ESTATE_LAND_USE_RIGHT: _ClassVar[RealEstateKind]
    REAL_ESTATE_NEW_BUILD: _ClassVar[RealEstateKind]
    REAL_ESTATE_EXTENSION: _ClassVar[RealEstateKind]
    REAL_ESTATE_LUXURY_RENOVATION: _ClassVar[RealEstateKind]
    REAL_ESTATE_ORDINARY_RENOVATION: _ClassVar[RealEstateKind]

class PrefilterContent(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PREFILTER_CONTENT_UNSPECIFIED: _ClassVar[PrefilterContent]
    PREFILTER_FULL: _ClassVar[PrefilterContent]
    PREFILTER_ADDITIONS: _ClassVar[PrefilterContent]
CHANNEL_UNSPECIFIED: Channel
RAIL: Channel
AIRLINE: Channel
HOTEL: Channel
SCHOOL: Channel
SHIP: Channel
TRAVEL: Channel
LEISURE: Channel
INSURANCE: Channel
REAL_ESTATE: Channel
VEHICLE: Channel
OFFICE_RENTAL: Channel
ID_TYPE_UNSPECIFIED: IdType
RESIDENT_ID: IdType
PASSPORT: IdType
HK_MACAO_PERMIT: IdType
TAIWAN_PERMIT: IdType
FOREIGN_PERMANENT_RESIDENT: IdType
DECISION_UNSPECIFIED: Decision
ALLOW: Decision
DENY: Decision
REVIEW: Decision
LIST_TYPE_UNSPECIFIED: ListType
SHIXIN: ListType
XIANGAO: ListType
ENTRY_STATUS_UNSPECIFIED: EntryStatus
ACTIVE: EntryStatus
SUSPENDED: EntryStatus
EXPIRED: EntryStatus
ROLE_UNSPECIFIED: Role
ROLE_DEBTOR: Role
ROLE_LEGAL_REPRESENTATIVE: Role
ROLE_PRINCIPAL: Role
ROLE_ACTUAL_CONTROLLER: Role
ROLE_RESPONSIBLE_PERSON: Role
RAIL_SEAT_UNSPECIFIED: RailSeat
RAIL_SEAT_BUSINESS: RailSeat
RAIL_SEAT_PREMIER: RailSeat
RAIL_SEAT_FIRST_CLASS: RailSeat
RAIL_SEAT_SECOND_CLASS: RailSeat
RAIL_SEAT_FIRST_CLASS_SLEEPER: RailSeat
RAIL_SEAT_SECOND_CLASS_SLEEPER: RailSeat
RAIL_SEAT_DELUXE_SOFT_SLEEPER: RailSeat
RAIL_SEAT_SOFT_SLEEPER: RailSeat
RAIL_SEAT_HARD_SLEEPER: RailSeat
RAIL_SEAT_SOFT_SEAT: RailSeat
RAIL_SEAT_HARD_SEAT: RailSeat
RAIL_SEAT_NO_SEAT: RailSeat
TRAVEL_SERVICE_UNSPECIFIED: TravelService
TRAVEL_OUTBOUND_GROUP_TOUR: TravelService
TRAVEL_OUTBOUND_RELATED: TravelService
TRAVEL_RATED_RESORT: TravelService
TRAVEL_DOMESTIC: TravelService
LEISURE_VENUE_UNSPECIFIED: LeisureVenue
LEISURE_NIGHTCLUB: LeisureVenue
LEISURE_GOLF: LeisureVenue
LEISURE_OTHER_HIGH_CONSUMPTION: LeisureVenue
LEISURE_ORDINARY: LeisureVenue
REAL_ESTATE_KIND_UNSPECIFIED: RealEstateKind
REAL_ESTATE_PROPERTY_PURCHASE: RealEstateKind
REAL_ESTATE_LAND_USE_RIGHT: RealEstateKind
REAL_ESTATE_NEW_BUILD: RealEstateKind
REAL_ESTATE_EXTENSION: RealEstateKind
REAL_ESTATE_LUXURY_RENOVATION: RealEstateKind
REAL_ESTATE_ORDINARY_RENOVATION: RealEstateKind
PREFILTER_CONTENT_UNSPECIFIED: PrefilterContent
PREFILTER_FULL: PrefilterContent
PREFILTER_ADDITIONS: PrefilterContent

class PersonSubject(_message.Message):
    __slots__ = ("id_type", "id_number", "name")
    ID_TYPE_FIELD_NUMBER: _ClassVar[int]
    ID_NUMBER_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    id_type: IdType
    id_number: str
    name: str
    def __init__(self, id_type: _Optional[_Union[IdType, str]] = ..., id_number: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class OrganizationSubject(_message.Message):
    __slots__ = ("uscc", "name")
    USCC_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    uscc: str
    name: str
    def __init__(self, uscc: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class RailPurchase(_message.Message):
    __slots__ = ("train_number", "seat")
    TRAIN_NUMBER_FIELD_NUMBER: _ClassVar[int]
    SEAT_FIELD_NUMBER: _ClassVar[int]
    train_number: str
    seat: RailSeat
    def __init__(self, train_number: _Optional[str] = ..., seat: _Optional[_Union[RailSeat, str]] = ...) -> None: ...

class FlightPurchase(_message.Message):
    __slots__ = ("flight_number", "cabin")
    FLIGHT_NUMBER_FIELD_NUMBER: _ClassVar[int]
    CABIN_FIELD_NUMBER: _ClassVar[int]
    flight_number: str
    cabin: str
    def __init__(self, flight_number: _Optional[str] = ..., cabin: _Optional[str] = ...) -> None: ...

class HotelPurchase(_message.Message):
    __slots__ = ("star_rating", "high_end")
    STAR_RATING_FIELD_NUMBER: _ClassVar[int]
    HIGH_END_FIELD_NUMBER: _ClassVar[int]
    star_rating: int
    high_end: bool
    def __init__(self, star_rating: _Optional[int] = ..., high_end: _Optional[bool] = ...) -> None: ...

class SchoolPurchase(_message.Message):
    __slots__ = ("private_school", "high_fee")
    PRIVATE_SCHOOL_FIELD_NUMBER: _ClassVar[int]
    HIGH_FEE_FIELD_NUMBER: _ClassVar[int]
    private_school: bool
    high_fee: bool
    def __init__(self, private_school: _Optional[bool] = ..., high_fee: _Optional[bool] = ...) -> None: ...

class ShipPurchase(_message.Message):
    __slots__ = ("cabin_class",)
    CABIN_CLASS_FIELD_NUMBER: _ClassVar[int]
    cabin_class: int
    def __init__(self, cabin_class: _Optional[int] = ...) -> None: ...

class TravelPurchase(_message.Message):
    __slots__ = ("service",)
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    service: TravelService
    def __init__(self, service: _Optional[_Union[TravelService, str]] = ...) -> None: ...

class LeisurePurchase(_message.Message):
    __slots__ = ("venue",)
    VENUE_FIELD_NUMBER: _ClassVar[int]
    venue: LeisureVenue
    def __init__(self, venue: _Optional[_Union[LeisureVenue, str]] = ...) -> None: ...

class InsurancePurchase(_message.Message):
    __slots__ = ("cash_value",)
    CASH_VALUE_FIELD_NUMBER: _ClassVar[int]
    cash_value: bool
    def __init__(self, cash_value: _Optional[bool] = ...) -> None: ...

class RealEstatePurchase(_message.Message):
    __slots__ = ("kind",)
    KIND_FIELD_NUMBER: _ClassVar[int]
    kind: RealEstateKind
    def __init__(self, kind: _Optional[_Union[RealEstateKind, str]] = ...) -> None: ...

class VehiclePurchase(_message.Message):
    __slots__ = ("business_necessary",)
    BUSINESS_NECESSARY_FIELD_NUMBER: _ClassVar[int]
    business_necessary: bool
    def __init__(self, business_necessary: _Optional[bool] = ...) -> None: ...

class OfficeRentalPurchase(_message.Message):
    __slots__ = ("high_end",)
    HIGH_END_FIELD_NUMBER: _ClassVar[int]
    high_end: bool
    def __init__(self, high_end: _Optional[bool] = ...) -> None: ...

class CheckRequest(_message.Message):
    __slots__ = ("request_id", "person", "organization", "channel", "rail", "flight", "hotel", "school", "ship", "travel", "leisure", "insurance", "real_estate", "vehicle", "office_rental", "amount_fen", "merchant_id", "terminal_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PERSON_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    RAIL_FIELD_NUMBER: _ClassVar[int]
    FLIGHT_FIELD_NUMBER: _ClassVar[int]
    HOTEL_FIELD_NUMBER: _ClassVar[int]
    SCHOOL_FIELD_NUMBER: _ClassVar[int]
    SHIP_FIELD_NUMBER: _ClassVar[int]
    TRAVEL_FIELD_NUMBER: _ClassVar[int]
    LEISURE_FIELD_NUMBER: _ClassVar[int]
    INSURANCE_FIELD_NUMBER: _ClassVar[int]
    REAL_ESTATE_FIELD_NUMBER: _ClassVar[int]
    VEHICLE_FIELD_NUMBER: _ClassVar[int]
    OFFICE_RENTAL_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FEN_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_ID_FIELD_NUMBER: _ClassVar[int]
    TERMINAL_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    person: PersonSubject
    organization: OrganizationSubject
    channel: Channel
    rail: RailPurchase
    flight: FlightPurchase
    hotel: HotelPurchase
    school: SchoolPurchase
    ship: ShipPurchase
    travel: TravelPurchase
    leisure: LeisurePurchase
    insurance: InsurancePurchase
    real_estate: RealEstatePurchase
    vehicle: VehiclePurchase
    office_rental: OfficeRentalPurchase
    amount_fen: int
    merchant_id: str
    terminal_id: str
    def __init__(self, request_id: _Optional[str] = ..., person: _Optional[_Union[PersonSubject, _Mapping]] = ..., organization: _Optional[_Union[OrganizationSubject, _Mapping]] = ..., channel: _Optional[_Union[Channel, str]] = ..., rail: _Optional[_Union[RailPurchase, _Mapping]] = ..., flight: _Optional[_Union[FlightPurchase, _Mapping]] = ..., hotel: _Optional[_Union[HotelPurchase, _Mapping]] = ..., school: _Optional[_Union[SchoolPurchase, _Mapping]] = ..., ship: _Optional[_Union[ShipPurchase, _Mapping]] = ..., travel: _Optional[_Union[TravelPurchase, _Mapping]] = ..., leisure: _Optional[_Union[LeisurePurchase, _Mapping]] = ..., insurance: _Optional[_Union[InsurancePurchase, _Mapping]] = ..., real_estate: _Optional[_Union[RealEstatePurchase, _Mapping]] = ..., vehicle: _Optional[_Union[VehiclePurchase, _Mapping]] = ..., office_rental: _Optional[_Union[OfficeRentalPurchase, _Mapping]] = ..., amount_fen: _Optional[int] = ..., merchant_id: _Optional[str] = ..., terminal_id: _Optional[str] = ...) -> None: ...

class Reason(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class Match(_message.Message):
    __slots__ = ("list_type", "case_number", "court", "role", "organization_name", "masked_id", "listed_on", "valid_until", "status", "entry_id")
    LIST_TYPE_FIELD_NUMBER: _ClassVar[int]
    CASE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    COURT_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_NAME_FIELD_NUMBER: _ClassVar[int]
    MASKED_ID_FIELD_NUMBER: _ClassVar[int]
    LISTED_ON_FIELD_NUMBER: _ClassVar[int]
    VALID_UNTIL_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    list_type: ListType
    case_number: str
    court: str
    role: Role
    organization_name: str
    masked_id: str
    listed_on: str
    valid_until: str
    status: EntryStatus
    entry_id: str
    def __init__(self, list_type: _Optional[_Union[ListType, str]] = ..., case_number: _Optional[str] = ..., court: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., organization_name: _Optional[str] = ..., masked_id: _Optional[str] = ..., listed_on: _Optional[str] = ..., valid_until: _Optional[str] = ..., status: _Optional[_Union[EntryStatus, str]] = ..., entry_id: _Optional[str] = ...) -> None: ...

class CheckResponse(_message.Message):
    __slots__ = ("request_id", "check_id", "decision", "reasons", "matches", "list_version", "error", "stale", "decided_locally")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CHECK_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    LIST_VERSION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    DECIDED_LOCALLY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    check_id: str
    decision: Decision
    reasons: _containers.RepeatedCompositeFieldContainer[Reason]
    matches: _containers.RepeatedCompositeFieldContainer[Match]
    list_version: str
    error: CheckError
    stale: bool
    decided_locally: bool
    def __init__(self, request_id: _Optional[str] = ..., check_id: _Optional[str] = ..., decision: _Optional[_Union[Decision, str]] = ..., reasons: _Optional[_Iterable[_Union[Reason, _Mapping]]] = ..., matches: _Optional[_Iterable[_Union[Match, _Mapping]]] = ..., list_version: _Optional[str] = ..., error: _Optional[_Union[CheckError, _Mapping]] = ..., stale: _Optional[bool] = ..., decided_locally: _Optional[bool] = ...) -> None: ...

class CheckError(_message.Message):
    __slots__ = ("code", "message", "reason", "field_violations", "retry_after_ms", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FIELD_VIOLATIONS_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    reason: str
    field_violations: _containers.RepeatedCompositeFieldContainer[FieldViolation]
    retry_after_ms: int
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., reason: _Optional[str] = ..., field_violations: _Optional[_Iterable[_Union[FieldViolation, _Mapping]]] = ..., retry_after_ms: _Optional[int] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class FieldViolation(_message.Message):
    __slots__ = ("field", "description")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    field: str
    description: str
    def __init__(self, field: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class CheckBatchRequest(_message.Message):
    __slots__ = ("checks",)
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    checks: _containers.RepeatedCompositeFieldContainer[CheckRequest]
    def __init__(self, checks: _Optional[_Iterable[_Union[CheckRequest, _Mapping]]] = ...) -> None: ...

class CheckBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[CheckResponse]
    def __init__(self, results: _Optional[_Iterable[_Union[CheckResponse, _Mapping]]] = ...) -> None: ...

class ListStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Count(_message.Message):
    __slots__ = ("list_type", "status", "entries")
    LIST_TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    list_type: str
    status: str
    entries: int
    def __init__(self, list_type: _Optional[str] = ..., status: _Optional[str] = ..., entries: _Optional[int] = ...) -> None: ...

class PolicyParameter(_message.Message):
    __slots__ = ("name", "value", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    description: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class ListStatus(_message.Message):
    __slots__ = ("version", "counts", "loaded_at", "source_timestamp", "staleness_seconds", "policy", "entries_total", "subject_keys", "last_delta_seq", "source", "serving", "index_backend", "replica_id", "upstream_version", "upstream_last_delta_seq", "lag_deltas", "index_reachable", "enumeration_flags", "not_serving_reason", "behind", "rejected_source", "rejected_problem", "snapshot_includes_seq", "stale", "stale_since", "max_list_age_seconds", "redis_write_refused")
    class EnumerationFlagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    STALENESS_SECONDS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_KEYS_FIELD_NUMBER: _ClassVar[int]
    LAST_DELTA_SEQ_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    INDEX_BACKEND_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_VERSION_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_LAST_DELTA_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAG_DELTAS_FIELD_NUMBER: _ClassVar[int]
    INDEX_REACHABLE_FIELD_NUMBER: _ClassVar[int]
    ENUMERATION_FLAGS_FIELD_NUMBER: _ClassVar[int]
    NOT_SERVING_REASON_FIELD_NUMBER: _ClassVar[int]
    BEHIND_FIELD_NUMBER: _ClassVar[int]
    REJECTED_SOURCE_FIELD_NUMBER: _ClassVar[int]
    REJECTED_PROBLEM_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_INCLUDES_SEQ_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    STALE_SINCE_FIELD_NUMBER: _ClassVar[int]
    MAX_LIST_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REDIS_WRITE_REFUSED_FIELD_NUMBER: _ClassVar[int]
    version: str
    counts: _containers.RepeatedCompositeFieldContainer[Count]
    loaded_at: str
    source_timestamp: str
    staleness_seconds: int
    policy: _containers.RepeatedCompositeFieldContainer[PolicyParameter]
    entries_total: int
    subject_keys: int
    last_delta_seq: int
    source: str
    serving: bool
    index_backend: str
    replica_id: str
    upstream_version: str
    upstream_last_delta_seq: int
    lag_deltas: int
    index_reachable: bool
    enumeration_flags: _containers.ScalarMap[str, int]
    not_serving_reason: str
    behind: bool
    rejected_source: str
    rejected_problem: str
    snapshot_includes_seq: int
    stale: bool
    stale_since: str
    max_list_age_seconds: int
    redis_write_refused: str
    def __init__(self, version: _Optional[str] = ..., counts: _Optional[_Iterable[_Union[Count, _Mapping]]] = ..., loaded_at: _Optional[str] = ..., source_timestamp: _Optional[str] = ..., staleness_seconds: _Optional[int] = ..., policy: _Optional[_Iterable[_Union[PolicyParameter, _Mapping]]] = ..., entries_total: _Optional[int] = ..., subject_keys: _Optional[int] = ..., last_delta_seq: _Optional[int] = ..., source: _Optional[str] = ..., serving: _Optional[bool] = ..., index_backend: _Optional[str] = ..., replica_id: _Optional[str] = ..., upstream_version: _Optional[str] = ..., upstream_last_delta_seq: _Optional[int] = ..., lag_deltas: _Optional[int] = ..., index_reachable: _Optional[bool] = ..., enumeration_flags: _Optional[_Mapping[str, int]] = ..., not_serving_reason: _Optional[str] = ..., behind: _Optional[bool] = ..., rejected_source: _Optional[str] = ..., rejected_problem: _Optional[str] = ..., snapshot_includes_seq: _Optional[int] = ..., stale: _Optional[bool] = ..., stale_since: _Optional[str] = ..., max_list_age_seconds: _Optional[int] = ..., redis_write_refused: _Optional[str] = ...) -> None: ...

class PrefilterRequest(_message.Message):
    __slots__ = ("known_version", "lookup_rules")
    KNOWN_VERSION_FIELD_NUMBER: _ClassVar[int]
    LOOKUP_RULES_FIELD_NUMBER: _ClassVar[int]
    known_version: str
    lookup_rules: int
    def __init__(self, known_version: _Optional[str] = ..., lookup_rules: _Optional[int] = ...) -> None: ...

class PrefilterHeader(_message.Message):
    __slots__ = ("version", "base_version", "built_at", "key_scheme", "prefilter_key", "hash_scheme", "expected_items", "false_positive_rate", "size_bytes", "items", "content", "data_bytes", "sha256", "channels", "lookup_rules", "stale_since", "filter_sha256")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    BUILT_AT_FIELD_NUMBER: _ClassVar[int]
    KEY_SCHEME_FIELD_NUMBER: _ClassVar[int]
    PREFILTER_KEY_FIELD_NUMBER: _ClassVar[int]
    HASH_SCHEME_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_ITEMS_FIELD_NUMBER: _ClassVar[int]
    FALSE_POSITIVE_RATE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    DATA_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    LOOKUP_RULES_FIELD_NUMBER: _ClassVar[int]
    STALE_SINCE_FIELD_NUMBER: _ClassVar[int]
    FILTER_SHA256_FIELD_NUMBER: _ClassVar[int]
    version: str
    base_version: str
    built_at: str
    key_scheme: str
    prefilter_key: bytes
    hash_scheme: str
    expected_items: int
    false_positive_rate: float
    size_bytes: int
    items: int
    content: PrefilterContent
    data_bytes: int
    sha256: bytes
    channels: _containers.RepeatedScalarFieldContainer[Channel]
    lookup_rules: int
    stale_since: str
    filter_sha256: bytes
    def __init__(self, version: _Optional[str] = ..., base_version: _Optional[str] = ..., built_at: _Optional[str] = ..., key_scheme: _Optional[str] = ..., prefilter_key: _Optional[bytes] = ..., hash_scheme: _Optional[str] = ..., expected_items: _Optional[int] = ..., false_positive_rate: _Optional[float] = ..., size_bytes: _Optional[int] = ..., items: _Optional[int] = ..., content: _Optional[_Union[PrefilterContent, str]] = ..., data_bytes: _Optional[int] = ..., sha256: _Optional[bytes] = ..., channels: _Optional[_Iterable[_Union[Channel, str]]] = ..., lookup_rules: _Optional[int] = ..., stale_since: _Optional[str] = ..., filter_sha256: _Optional[bytes] = ...) -> None: ...

class PrefilterChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: PrefilterHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[PrefilterHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...
