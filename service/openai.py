"""OpenAI's chat-completions shapes, and OpenAI messages -> one stateless PandaGPT turn.

Mapping:
- system (and developer) messages are ignored: PandaGPT's template has no system prompt.
- The rest must alternate user, assistant, ..., user: earlier (user, assistant) pairs become the
  history, the last user message is the turn's message. A message's text parts join with "\\n".
- Every media part of every user message joins the one media slot, in message order: the same sum
  as /chat when the media are sent turn by turn (within one /chat turn, uploads are summed in
  modality order instead; a sum's order changes nothing but float rounding).
- Media parts: image_url, input_audio (base64, any format the audio decoder reads; `format` is not
  checked), video_url, and our extensions audio_url, thermal_url, depth_url, imu_url. URLs are
  `data:` URLs, or http(s) from allow-listed hosts (service.remote_media). A part's errors name it,
  e.g. `messages[0].content[1]`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field

from encoders.errors import MediaTooLarge
from encoders.pool import MediaInput
from service import remote_media
from service.chat import SamplingRequest
from service.errors import BadRequest
from service.settings import Settings

# --- request -------------------------------------------------------------------------------------


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class MediaURL(BaseModel):
    url: str = Field(description="a data: URL (base64 or percent-encoded), or http(s) when remote media is enabled")


class InputAudio(BaseModel):
    data: str = Field(description="the file, base64-encoded")
    format: str = Field(default="wav", description='"wav" or "mp3" (informational: the decoder reads the bytes)')


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: MediaURL


class InputAudioPart(BaseModel):
    type: Literal["input_audio"]
    input_audio: InputAudio


class AudioURLPart(BaseModel):
    """Extension (as in vLLM): audio as a URL."""

    type: Literal["audio_url"]
    audio_url: MediaURL


class VideoPart(BaseModel):
    type: Literal["video_url"]
    video_url: MediaURL


class ThermalPart(BaseModel):
    """Extension: a thermal image."""

    type: Literal["thermal_url"]
    thermal_url: MediaURL


class DepthPart(BaseModel):
    """Extension: a depth map (16-bit PNG in mm, .npy in m or mm, or 8-bit disparity)."""

    type: Literal["depth_url"]
    depth_url: MediaURL


class IMUPart(BaseModel):
    """Extension: IMU samples (.npy or CSV, 6 channels), e.g. `data:application/octet-stream;base64,...`."""

    type: Literal["imu_url"]
    imu_url: MediaURL


UserPart = Annotated[
    TextPart | ImagePart | InputAudioPart | AudioURLPart | VideoPart | ThermalPart | DepthPart | IMUPart,
    Field(discriminator="type"),
]


def _as_parts(content: Any) -> Any:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


# A string is one text part; validating one list type keeps error paths short (messages.0.content.1...).
UserContent = Annotated[list[UserPart], BeforeValidator(_as_parts, json_schema_input_type=str | list[UserPart])]
TextContent = Annotated[list[TextPart], BeforeValidator(_as_parts, json_schema_input_type=str | list[TextPart])]


class SystemMessage(BaseModel):
    """Accepted and ignored: PandaGPT has no system prompt."""

    role: Literal["system", "developer"]
    content: TextContent


class UserMessage(BaseModel):
    role: Literal["user"]
    content: UserContent


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: TextContent | None = None


Message = Annotated[SystemMessage | UserMessage | AssistantMessage, Field(discriminator="role")]


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """OpenAI's body; fields it has that PandaGPT cannot use (tools, response_format, ...) are ignored."""

    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, description="wins over max_tokens")
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=-1, description="extension: top-k sampling (-1: off)")
    seed: int | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = Field(default=None, description="up to 4 strings")
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    n: int = Field(default=1, description="only 1 is supported")

    def sampling(self) -> SamplingRequest:
        if self.n != 1:
            raise BadRequest("n: only n=1 is supported", param="n")
        if self.top_logprobs and not self.logprobs:
            raise BadRequest("top_logprobs needs logprobs=true", param="top_logprobs")
        stop = [self.stop] if isinstance(self.stop, str) else self.stop or []
        return SamplingRequest(
            max_tokens=self.max_completion_tokens or self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
            stop=tuple(s for s in stop if s),
            logprobs=(self.top_logprobs or 0) if self.logprobs else None,
        )


# --- response ------------------------------------------------------------------------------------


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobView(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobView] | None


class AssistantReply(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantReply
    finish_reason: Literal["stop", "length"]
    logprobs: ChoiceLogprobs | None = None


class CompletionUsage(BaseModel):
    prompt_tokens: int = Field(description="prompt positions, the media slot included")
    completion_tokens: int = Field(description="generated tokens, PandaGPT's end-of-turn tokens included")
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "pandaserve"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# --- messages -> (history, message, media) -------------------------------------------------------

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
    messages: list[SystemMessage | UserMessage | AssistantMessage], settings: Settings
) -> tuple[list[tuple[str, str]], str, list[MediaInput]]:
    """(history, message, media) of a stateless PandaGPT turn; BadRequest naming the message at fault."""
    history: list[tuple[str, str]] = []
    media: list[MediaInput] = []
    counts: dict[str, int] = {}
    question: tuple[int, str] | None = None  # the user message waiting for its answer
    for i, msg in enumerate(messages):
        if isinstance(msg, SystemMessage):
            continue
        text = _text(msg.content)
        if len(text) > settings.max_message_chars:
            raise BadRequest(
                f"messages[{i}].content has {len(text)} characters, over the limit of {settings.max_message_chars}",
                param=f"messages[{i}].content",
            )
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
            if counts[modality] > settings.max_files_per_modality:
                raise BadRequest(
                    f"{field}: at most {settings.max_files_per_modality} {modality} files per request", param=field
                )
            media.append(MediaInput(modality, await _media_bytes(part, modality, field, settings), field))
    if question is None:
        raise BadRequest("the last message must be a user message (PandaGPT answers the user)", param="messages")
    return history, question[1], media
