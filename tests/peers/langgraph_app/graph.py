"""A LangGraph app for troupe's tests: a MessagesState graph whose one node
answers with langchain-core's fake chat model, so ``langgraph dev`` serves it
offline. The thread keeps the messages, and each answer says how many user
turns the thread has seen: ``langgraph reply #N to: <last user text>``.

When the messages hold a ``troupe-say`` directive, the answer is the shared
scripted model's instead (``tests/peers/_common.py``, found through
``TROUPE_PEER_COMMON``, which ``langgraph_peer.py`` sets), streamed in pieces
of the directive's size."""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Iterator

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGenerationChunk
from langgraph.graph import START, MessagesState, StateGraph


def _load_common() -> Any:
    # The server runs a copy of this app elsewhere: the shared module is
    # loaded from the path the peer gives, not imported relative to here.
    path = os.environ.get("TROUPE_PEER_COMMON")
    if not path:
        raise RuntimeError("TROUPE_PEER_COMMON is not set: start the server through tests/peers/langgraph_peer.py")
    spec = importlib.util.spec_from_file_location("troupe_peer_common", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_common = _load_common()


def _text(content) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for p in content or []:
        if isinstance(p, dict) and p.get("type") == "text":
            parts.append(str(p.get("text", "")))
        elif isinstance(p, str):
            parts.append(p)
    return " ".join(parts)


class PiecesFakeChatModel(GenericFakeChatModel):
    """The fake model, streaming its answer in the given pieces instead of
    word by word."""

    pieces: list[str]

    def _stream(self, messages: list[BaseMessage], stop=None, run_manager=None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        for i, piece in enumerate(self.pieces):
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if i == len(self.pieces) - 1:
                chunk.message.chunk_position = "last"
            if run_manager:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk


def answer(state: MessagesState) -> dict:
    humans = [m for m in state["messages"] if isinstance(m, HumanMessage)]
    scripted = _common.scripted_answer("\n\n".join(_text(m.content) for m in state["messages"]))
    if scripted is not None:
        reply, chunk = scripted
        model = PiecesFakeChatModel(messages=iter([AIMessage(content=reply)]), pieces=_common.pieces(reply, chunk))
        return {"messages": [model.invoke(state["messages"])]}
    last = _text(humans[-1].content) if humans else ""
    reply = f"langgraph reply #{len(humans)} to: {last}"
    # The fake model streams its fixed answer token by token, which is what
    # the `messages` stream mode relays.
    model = GenericFakeChatModel(messages=iter([AIMessage(content=reply)]))
    return {"messages": [model.invoke(state["messages"])]}


builder = StateGraph(MessagesState)
builder.add_node("answer", answer)
builder.add_edge(START, "answer")
graph = builder.compile()
