"""OpenAI messages -> one stateless turn (history, message, media).

Mapping:
- system (and developer) messages are ignored: PandaGPT's template has no system prompt.
- The rest must alternate user, assistant, ..., user: earlier (user, assistant) pairs become the
  history, the last user message is the turn's message. A message's text parts join with "\\n".
- Every media part of every user message joins the one media slot, in message order: the same sum
  as /chat when the media are sent turn by turn (within one /chat turn, uploads are summed in
  modality order instead; a sum's order changes nothing but float rounding).
- Media parts: image_url, input_audio (base64, any format the audio decoder reads; `format` is not
  checked), video_url, and our extensions audio_url, thermal_url, depth_url, imu_url. URLs are
  `data:` URLs, or http(s) from allow-listed hosts (service/api/remote_media.py). A part's errors name it,
  e.g. `messages[0].content[1]`.
"""

from __future__ import annotations

from typing import Any

from encoders.errors import MediaTooLarge
from encoders.media import MediaInput
from service.api import remote_media
from service.api.v1_schemas import AssistantMessage, InputAudioPart, SystemMessage, TextPart, UserMessage, UserPart
from service.core.turn_limits import TurnLimits
from service.errors import BadRequest
from service.settings import Settings

MEDIA_PARTS = {
    "image_url": "image",
    "input_audio": "audio",
    "audio_url": "audio",
    "video_url": "video",
    "thermal_url": "thermal",
    "depth_url": "depth",
    "imu_url": "imu",
}


def _text(parts: list[TextPart] | list[UserPart] | None) -> str:
    return "\n".join(p.text for p in parts or [] if isinstance(p, TextPart))


async def _media_bytes(part: Any, modality: str, field: str, settings: Settings) -> bytes:
    limit = settings.max_file_bytes
    if isinstance(part, InputAudioPart):
        data = remote_media.decode_base64(part.input_audio.data, field, limit)
    else:
        url: str = getattr(part, part.type).url
        if remote_media.is_remote(url):
            hosts = remote_media.allowed_hosts(settings.remote_media_hosts)
            data = await remote_media.fetch(
                url, hosts=hosts, timeout_s=settings.remote_media_timeout_s, max_bytes=limit, field=field
            )
        elif url[:5].lower() == "data:":
            data = remote_media.decode_data_url(url, modality, field, limit)
        else:
            raise BadRequest(f"{field}: the URL must be a data: URL (or http(s), when enabled)", param=field)
    if len(data) > limit:
        raise MediaTooLarge.bytes_over(field, limit)
    return data


async def to_turn(
    messages: list[SystemMessage | UserMessage | AssistantMessage],
    settings: Settings,
    limits: TurnLimits,
    tenant: str | None,
) -> tuple[list[tuple[str, str]], str, list[MediaInput]]:
    """(history, message, media: the tenant's) of a stateless PandaGPT turn; BadRequest naming the
    message at fault."""
    history: list[tuple[str, str]] = []
    media: list[MediaInput] = []
    counts: dict[str, int] = {}
    question: tuple[int, str] | None = None  # the user message waiting for its answer
    limits.check_conversation([_text(m.content) for m in messages], "messages")
    for i, msg in enumerate(messages):
        if isinstance(msg, SystemMessage):
            continue
        text = _text(msg.content)
        limits.check_message(text, f"messages[{i}].content")
        if isinstance(msg, AssistantMessage):
            if question is None:
                raise BadRequest(
                    f"messages[{i}]: an assistant message must follow a user message", param=f"messages[{i}]"
                )
            history.append((question[1], text))
            question = None
            continue
        if question is not None:
            raise BadRequest(
                f"messages[{i}]: two user messages in a row (messages[{question[0]}] and messages[{i}]); "
                "PandaGPT's conversation alternates user and assistant",
                param=f"messages[{i}]",
            )
        question = (i, text)
        for j, part in enumerate(msg.content):
            if isinstance(part, TextPart):
                continue
            field, modality = f"messages[{i}].content[{j}]", MEDIA_PARTS[part.type]
            counts[modality] = counts.get(modality, 0) + 1
            limits.check_file_count(modality, counts[modality], field)
            media.append(MediaInput(modality, await _media_bytes(part, modality, field, settings), field, tenant))
    if question is None:
        raise BadRequest("the last message must be a user message (PandaGPT answers the user)", param="messages")
    return history, question[1], media
