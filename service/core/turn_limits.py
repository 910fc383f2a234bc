"""The per-turn limits both chat APIs (/chat and /v1) check, with the field named in each error."""

from __future__ import annotations

from dataclasses import dataclass

from service.errors import BadRequest


@dataclass(frozen=True)
class TurnLimits:
    max_message_chars: int
    max_files_per_modality: int
    max_messages: int
    max_conversation_chars: int

    def check_message(self, text: str, field: str) -> None:
        if len(text) > self.max_message_chars:
            raise BadRequest(
                f"{field} has {len(text)} characters, over the limit of {self.max_message_chars}", param=field
            )

    def check_file_count(self, modality: str, count: int, field: str) -> None:
        if count > self.max_files_per_modality:
            raise BadRequest(
                f"{field}: at most {self.max_files_per_modality} {modality} files per request", param=field
            )

    def check_conversation(self, texts: list[str], field: str) -> None:
        """A whole conversation sent at once (/v1): its message count and its characters together."""
        if len(texts) > self.max_messages:
            raise BadRequest(f"{field} has {len(texts)} messages, over the limit of {self.max_messages}", param=field)
        total = sum(map(len, texts))
        if total > self.max_conversation_chars:
            raise BadRequest(
                f"{field} hold {total} characters of text, over the limit of {self.max_conversation_chars}",
                param=field,
            )
