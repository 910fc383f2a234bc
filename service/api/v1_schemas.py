"""OpenAI's chat-completions shapes (requests and responses) as /v1 accepts and answers them.
service/api/v1_messages.py turns a request's messages into one stateless turn."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field

from service.api.schemas import MaxTokens, Seed, Temperature, TopK, TopP
from service.core.chat_service import SamplingRequest
from service.errors import BadRequest

# --- request -------------------------------------------------------------------------------------


StopString = Annotated[str, Field(max_length=256)]


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
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = Field(default=None, description="wins over max_tokens")
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = Field(default=None, description="extension: top-k sampling (-1: off)")
    seed: Seed | None = None
    # Each is searched for in the reply after every token, and holds back as many characters: bounded.
    stop: StopString | Annotated[list[StopString], Field(max_length=4)] | None = Field(
        default=None, description="up to 4 strings of at most 256 characters"
    )
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
