"""Channels, event types, families and identifier types: the vocabulary of touchpoints.

Event names are snake_case forms of the Segment e-commerce spec where one
exists (``product_viewed`` for "Product Viewed", ``order_completed`` for
"Order Completed"). Every event type belongs to one *family*; its typed
properties are the record of that family in ``Touchpoint.properties``
(``schemas/com.touchline.touchpoint.Properties.avsc``), e.g. ``product_added``
carries ``properties.cart``.
"""

from __future__ import annotations

CHANNELS = frozenset({
    "web", "app", "mini_program", "wechat_oa", "store_pos", "marketplace",
    "customer_service", "partner", "sms", "email",
})

PAGE_TYPES = frozenset({"page_viewed", "screen_viewed"})
IDENTIFY_TYPES = frozenset({"identify", "login", "signed_up"})

# event type -> the field of Properties holding its typed properties
FAMILY_OF: dict[str, str] = {
    "page_viewed": "page", "screen_viewed": "page",
    "products_searched": "search",
    "product_viewed": "product",
    "product_added": "cart", "product_removed": "cart",
    "checkout_started": "checkout",
    "order_completed": "order", "order_paid": "order", "order_refunded": "order",
    "store_visited": "store_visit",
    "guide_chatted": "interaction", "service_consulted": "interaction",
    "coupon_claimed": "coupon", "coupon_redeemed": "coupon",
    "points_earned": "loyalty", "points_redeemed": "loyalty", "points_exchanged": "loyalty",
    "minigame_played": "loyalty",
    "wechat_followed": "wechat", "wechat_unfollowed": "wechat",
    "message_opened": "message", "message_clicked": "message",
    "identify": "identify", "login": "identify", "signed_up": "identify",
    "consent_given": "consent", "consent_withdrawn": "consent",
    "custom": "custom",
}
EVENT_TYPES = frozenset(FAMILY_OF)
FAMILIES = tuple(dict.fromkeys(FAMILY_OF.values()))

# Fields each event type must carry beyond the envelope's required ones:
# "properties.<field>" inside its family record, or an envelope field.
REQUIRED: dict[str, tuple[str, ...]] = {
    "products_searched": ("properties.query",),
    "product_viewed": ("properties.product_id",),
    "product_added": ("properties.cart_id", "properties.product_id"),
    "product_removed": ("properties.cart_id", "properties.product_id"),
    "order_completed": ("properties.order_id",),
    "order_paid": ("properties.order_id",),
    "order_refunded": ("properties.order_id",),
    "store_visited": ("store_id",),
    "guide_chatted": ("guide_id",),
    "coupon_claimed": ("properties.coupon_id",),
    "coupon_redeemed": ("properties.coupon_id",),
    "points_earned": ("properties.points",),
    "points_redeemed": ("properties.points",),
    "points_exchanged": ("properties.points", "properties.partner"),
    "minigame_played": ("properties.game_id",),
    "wechat_followed": ("properties.account_id",),
    "wechat_unfollowed": ("properties.account_id",),
    "message_opened": ("properties.message_id",),
    "message_clicked": ("properties.message_id",),
    "consent_given": ("properties.consent_channel",),
    "consent_withdrawn": ("properties.consent_channel",),
    "custom": ("properties.event_name",),
}

# Segment's spec names ("Product Added") and common aliases -> Touchline types.
SEGMENT_NAMES: dict[str, str] = {
    "Page": "page_viewed", "Screen": "screen_viewed", "Identify": "identify",
    "Products Searched": "products_searched", "Product Viewed": "product_viewed",
    "Product Added": "product_added", "Product Removed": "product_removed",
    "Checkout Started": "checkout_started", "Order Completed": "order_completed",
    "Order Refunded": "order_refunded", "Coupon Applied": "coupon_redeemed",
    "Coupon Entered": "coupon_claimed", "Signed Up": "signed_up", "Signed In": "login",
}

# Priority order: the first one present on an event is its route key, i.e. the
# device-like identifier whose partition holds its identity links.
ROUTE_IDENTIFIERS = (
    "anonymous_id", "device_id", "wechat_openid", "platform_buyer_id", "pos_card",
    "wechat_unionid", "member_id", "phone", "email",
)
PERSONAL_IDENTIFIERS = ("phone", "email")  # hashed before leaving ingestion

# Values that are placeholders, not identifiers: they never link two events.
JUNK_VALUES = frozenset({
    "", "0", "-1", "null", "none", "nil", "undefined", "nan", "anonymous", "guest",
    "unknown", "[object object]", "00000000-0000-0000-0000-000000000000",
})


def is_junk(value: str | None) -> bool:
    if value is None:
        return True
    v = value.strip().lower()
    return v in JUNK_VALUES or (len(v) > 0 and set(v) <= {"0", "-"})
