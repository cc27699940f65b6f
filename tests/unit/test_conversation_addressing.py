"""Addressing rules in groups: mentions (UTF-16 offsets), text mentions, replies to the bot."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from aiconv.conversation.addressing import BotIdentity, address, strip_spans, utf16_span
from aiconv.telegram.models import IncomingMessage, MessageEntity, RepliedMessage
from tests.support.messages import incoming_message

BOT = BotIdentity(user_id=4242, username="Aiconv_Bot")

# Text around a mention: ASCII, accents, CJK and astral emoji (two UTF-16 units each).
pieces = st.lists(
    st.sampled_from([*"ab cé字,:!\n", "\U0001f600", "\U0001f469\u200d\U0001f4bb"]), max_size=12
).map("".join)


def units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def group_message(
    text: str,
    entities: tuple[MessageEntity, ...] = (),
    reply_to: RepliedMessage | None = None,
    chat_type: str = "supergroup",
) -> IncomingMessage:
    return incoming_message(
        chat_id=-1001,
        chat_type=chat_type,
        user_id=7,
        username="u7",
        message_id=10,
        text=text,
        entities=entities,
        reply_to=reply_to,
    )


@given(before=pieces, after=pieces, spelling=st.sampled_from(["@Aiconv_Bot", "@aiconv_bot"]))
def test_a_mention_at_its_utf16_offset_addresses_the_bot_and_is_stripped(
    before: str, after: str, spelling: str
) -> None:
    text = f"{before}{spelling}{after}"
    entity = MessageEntity("mention", units(before), units(spelling))
    result = address(group_message(text, (entity,)), BOT)
    assert result.addressed
    assert spelling not in result.text
    assert result.text == strip_spans(text, [(len(before), len(before) + len(spelling))])


@given(before=pieces, after=pieces)
def test_a_mention_of_another_bot_does_not_address_it(before: str, after: str) -> None:
    text = f"{before}@other_bot{after}"
    entity = MessageEntity("mention", units(before), len("@other_bot"))
    result = address(group_message(text, (entity,)), BOT)
    assert not result.addressed
    assert result.text == text  # nothing stripped


@given(before=pieces, after=pieces)
def test_an_offset_counted_in_code_points_misses_after_an_emoji(before: str, after: str) -> None:
    """Offsets are UTF-16: one counted in Python characters points elsewhere after an emoji."""
    text = f"\U0001f600{before}@Aiconv_Bot{after}"
    wrong = MessageEntity("mention", len("\U0001f600" + before), len("@Aiconv_Bot"))
    assert not address(group_message(text, (wrong,)), BOT).addressed


@given(
    text=pieces,
    raw=st.lists(
        st.tuples(
            st.sampled_from(["mention", "text_mention", "bold", "bot_command"]),
            st.integers(0, 40),
            st.integers(0, 40),
            st.sampled_from([None, 4242, 1]),
        ),
        max_size=5,
    ),
)
def test_any_entities_never_crash_and_only_the_bot_s_spans_are_removed(
    text: str, raw: list[tuple[str, int, int, int | None]]
) -> None:
    entities = tuple(MessageEntity(kind, off, length, uid) for kind, off, length, uid in raw)
    result = address(group_message(text, entities), BOT)
    if not result.addressed:
        assert result.text == text
    assert len(result.text) <= len(text)


def test_a_text_mention_of_the_bot_s_id_addresses_it() -> None:
    text = "hey Aiconv what now"
    entity = MessageEntity("text_mention", 4, 6, user_id=4242)
    result = address(group_message(text, (entity,)), BOT)
    assert (result.addressed, result.text) == (True, "hey what now")
    other = MessageEntity("text_mention", 4, 6, user_id=99)
    assert not address(group_message(text, (other,)), BOT).addressed


def test_a_reply_to_the_bot_addresses_it_and_a_reply_to_someone_else_does_not() -> None:
    to_bot = RepliedMessage(message_id=5, from_user_id=4242, from_is_bot=True)
    to_ann = RepliedMessage(message_id=5, from_user_id=8, from_is_bot=False)
    assert address(group_message("and then?", reply_to=to_bot), BOT).addressed
    assert not address(group_message("and then?", reply_to=to_ann), BOT).addressed


def test_plain_group_chatter_is_not_addressed_unless_group_mode_is_all() -> None:
    message = group_message("lunch at noon?")
    assert not address(message, BOT).addressed
    assert address(message, BOT, "all").addressed


def test_private_chats_are_always_addressed() -> None:
    assert address(group_message("hi", chat_type="private"), BOT).addressed


def test_leading_mention_and_its_comma_are_removed() -> None:
    text = "@Aiconv_Bot, what is 2+2?"
    result = address(group_message(text, (MessageEntity("mention", 0, 11),)), BOT)
    assert result.text == "what is 2+2?"


def test_without_the_bot_s_identity_only_group_mode_all_answers_groups() -> None:
    message = group_message("@Aiconv_Bot hi", (MessageEntity("mention", 0, 11),))
    assert not address(message, None).addressed
    assert address(message, None, "all").addressed


def test_utf16_span_refuses_half_a_surrogate_pair_and_the_outside() -> None:
    text = "\U0001f600ab"
    assert utf16_span(text, 0, 2) == (0, 1)
    assert utf16_span(text, 2, 2) == (1, 3)
    assert utf16_span(text, 1, 1) is None  # inside the emoji
    assert utf16_span(text, 3, 5) is None  # beyond the end
    assert utf16_span(text, 4, 0) == (3, 3)
