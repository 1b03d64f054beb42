"""Channels, event types and identifier types: the vocabulary of touchpoints.

Event names are snake_case forms of the Segment e-commerce spec where one
exists (``product_viewed`` for "Product Viewed", ``order_completed`` for
"Order Completed").
"""

from __future__ import annotations

CHANNELS = frozenset({
    "web", "app", "mini_program", "wechat_oa", "store_pos", "marketplace",
    "customer_service", "partner", "sms", "email",
})

PAGE_TYPES = frozenset({"page_viewed", "screen_viewed"})
CART_TYPES = frozenset({"product_added", "product_removed"})
CHECKOUT_TYPES = frozenset({"checkout_started"})
ORDER_TYPES = frozenset({"order_completed", "order_paid"})
IDENTIFY_TYPES = frozenset({"identify", "login", "signed_up"})

EVENT_TYPES = frozenset({
    *PAGE_TYPES, "products_searched", "product_viewed", *CART_TYPES, *CHECKOUT_TYPES,
    *ORDER_TYPES, "order_refunded", "store_visited", "guide_chatted", "service_consulted",
    "coupon_claimed", "coupon_redeemed", "points_earned", "points_redeemed",
    "points_exchanged", "minigame_played", "wechat_followed", "wechat_unfollowed",
    "message_opened", "message_clicked", *IDENTIFY_TYPES, "consent_given",
    "consent_withdrawn", "custom",
})

# Priority order: the first one present on an event is its route key, i.e. the
# device-like identifier whose partition holds its identity links.
ROUTE_IDENTIFIERS = (
    "anonymous_id", "device_id", "wechat_openid", "platform_buyer_id", "pos_card",
    "wechat_unionid", "member_id", "phone", "email",
)

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
