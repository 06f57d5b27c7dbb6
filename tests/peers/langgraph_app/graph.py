"""A LangGraph app for troupe's tests: a MessagesState graph whose one node
answers with langchain-core's fake chat model, so ``langgraph dev`` serves it
offline. The thread keeps the messages, and each answer says how many user
turns the thread has seen: ``langgraph reply #N to: <last user text>``."""

from __future__ import annotations

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.graph import START, MessagesState, StateGraph


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


def answer(state: MessagesState) -> dict:
    humans = [m for m in state["messages"] if isinstance(m, HumanMessage)]
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
