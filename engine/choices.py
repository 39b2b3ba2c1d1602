"""Decoding restricted to a fixed set of strings (labels) through a trie of their token sequences."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class _Node:
    children: dict[int, "_Node"] = field(default_factory=dict)
    terminal: bool = False


class ChoiceTrie:
    def __init__(self, sequences: list[list[int]]) -> None:
        self.root = _Node()
        self.depth = max((len(seq) for seq in sequences), default=0)  # tokens in the longest choice
        for seq in sequences:
            node = self.root
            for token in seq:
                node = node.children.setdefault(token, _Node())
            node.terminal = True


class ChoiceState:
    """Where one request stands in its trie; ``end_token`` closes a label that is a prefix of another."""

    def __init__(self, trie: ChoiceTrie, end_token: int) -> None:
        self.node = trie.root
        self.end_token = end_token

    def allowed(self) -> list[int]:
        tokens = list(self.node.children)
        if self.node.terminal:
            tokens.append(self.end_token)
        return tokens

    def forced_tail(self) -> list[int]:
        """The tokens that must follow when only one label is still possible and nothing else can be chosen on the
        way to its end (each node one child, none terminal but the last, which has no children); else []."""
        tail, node = [], self.node
        while len(node.children) == 1 and not node.terminal:
            token, node = next(iter(node.children.items()))
            tail.append(token)
        return tail if node.terminal and not node.children else []

    def advance(self, token: int) -> bool:
        """Consume a sampled token; True when the answer is complete."""
        if token == self.end_token and self.node.terminal:
            return True
        self.node = self.node.children[token]
        return self.node.terminal and not self.node.children
