"""The labeling workload's data: a labeling guideline (~1,000 tokens, the same for every row) and its rows,
sentences of Python's own documentation as the interpreter ships it, offline: pydoc_data.topics, then the
docstrings of some standard-library modules.

The guideline was written for this benchmark: five topic labels, each with a description, what it does not cover,
and examples. Every row is one sentence to label with exactly one of them.
"""
from __future__ import annotations

import random
import re

LABELS = ["syntax", "data", "functions", "objects", "errors"]

GUIDELINE = """\
You are labeling sentences taken from the reference documentation of the Python programming language. Each \
sentence comes alone, without the paragraph around it. Read it and answer with exactly one label from the five \
below, written in lower case, with nothing before or after it: no explanation, no punctuation, no quotes. When a \
sentence touches more than one topic, choose the topic that the sentence is mainly about, that is, the thing a \
reader would look up to find this sentence. When nothing fits well, choose the closest label anyway; never answer \
with a label that is not in the list.

Label 1: syntax
Use syntax for sentences about how Python source code is written and read by the parser: the grammar of \
statements and expressions, keywords, identifiers, literals as they appear in source text, indentation, line \
structure, comments, operator precedence, the form of assignment statements, the form of import statements, \
decorators as written, and what makes a program syntactically valid. A sentence that explains how to spell or \
arrange something in the code belongs here, even when the construct it describes also has a meaning at run time.
Examples of syntax:
- "A logical line is constructed from one or more physical lines by following the explicit or implicit line \
joining rules."
- "Keywords cannot be used as ordinary identifiers and must be spelled exactly as written here."
- "The comparison operators all have the same priority, which is lower than that of any arithmetic operator."
Not syntax: what a statement does when it runs (choose the label of the thing it acts on), or an error raised by \
invalid code (choose errors).

Label 2: data
Use data for sentences about values and the built-in types that hold them: numbers (integers, floating point \
numbers, complex numbers), booleans, strings and bytes, lists, tuples, ranges, dictionaries, sets, their \
operations and methods, conversions between them, formatting of values into text, comparison and ordering of \
values, mutability, hashing, copying, and the sequence and mapping protocols as seen by someone using a container.
Examples of data:
- "Strings are immutable sequences of Unicode code points."
- "The result of integer division is always rounded towards minus infinity."
- "A dictionary maps hashable keys to arbitrary values and keeps the order in which keys were inserted."
Not data: how a container class is defined by the programmer (choose objects), or the exception raised by a \
missing key (choose errors).

Label 3: functions
Use functions for sentences about defining, calling and running callables and about the flow of execution: \
function definitions, parameters and arguments (positional, keyword, default values, variable argument lists), \
return values, lambda expressions, generators and the yield expression, coroutines, await and asynchronous \
iteration, scopes and name binding (local, nonlocal and global names, closures), and statements that direct \
control such as if, while, for, break, continue, return and with, seen as what happens while the code runs.
Examples of functions:
- "When a function is called, a new local namespace is created for the duration of the call."
- "Default parameter values are evaluated from left to right when the function definition is executed."
- "A generator function returns an iterator that produces the values of its yield expressions one at a time."
Not functions: the spelling of a def statement (choose syntax), or a method's role in a class (choose objects).

Label 4: objects
Use objects for sentences about the object model: identity, type and value of objects, classes and instances, \
attributes and attribute lookup, methods and bound methods, inheritance and the method resolution order, special \
methods (the double underscore methods that let a class take part in operators, iteration, context managers or \
attribute access), descriptors, properties, slots, metaclasses, modules and packages seen as objects, the import \
system and its finders and loaders, and object lifetime: creation, reference counting and garbage collection.
Examples of objects:
- "Every object has an identity, a type and a value."
- "A class can implement certain operations that are invoked by special syntax by defining methods with special \
names."
- "When an attribute is not found on the instance, the search continues in the class and then in its base classes."
Not objects: the built-in containers used as values (choose data), or ordinary function calls (choose functions).

Label 5: errors
Use errors for sentences about things going wrong and how a program reacts: exceptions and the exception \
hierarchy, raising an exception, handling it with try, except, else and finally, exception groups, tracebacks, \
chained exceptions and their context, assertions, warnings, error messages, undefined behavior, and the specific \
conditions under which an operation fails (for example "raises ValueError if ...", "it is an error to ...").
Examples of errors:
- "If the key is not found, a KeyError exception is raised."
- "The finally clause is executed whether or not an exception occurred in the try clause."
- "It is an error to assign to a name that is declared nonlocal in an enclosing scope that does not bind it."
Not errors: a normal, successful operation that merely mentions an exception type in passing as an object (choose \
objects).

Answer with one word: syntax, data, functions, objects or errors."""


def _sentences(paragraph: str) -> list[str]:
    """The paragraph's sentences: split after '.', '?' or '!' followed by a space and a capital letter."""
    return [s.strip() for s in re.split(r"(?<=[.?!])\s+(?=[A-Z])", paragraph) if s.strip()]


# Standard-library modules whose docstrings add rows beyond pydoc_data's prose (~1,250 sentences of 8-40 words).
DOCSTRING_MODULES = ("builtins", "argparse", "asyncio", "collections", "contextlib", "csv", "dataclasses", "datetime",
                     "decimal", "email.message", "enum", "fractions", "functools", "heapq", "http.client", "inspect",
                     "io", "itertools", "json", "logging", "os", "pathlib", "pickle", "random", "re", "shutil", "socket",
                     "statistics", "string", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "typing",
                     "unittest", "urllib.parse", "uuid", "zipfile")


def _docstring_paragraphs(module_name: str) -> list[str]:
    """Prose paragraphs of a module's docstring and of its public members' (and their methods') docstrings."""
    import importlib
    import inspect

    module = importlib.import_module(module_name)
    docs = [inspect.getdoc(module)]
    for name in sorted(dir(module)):
        if name.startswith("_"):
            continue
        member = getattr(module, name, None)
        docs.append(inspect.getdoc(member) if callable(member) else None)
        if inspect.isclass(member):
            docs += [inspect.getdoc(v) for k, v in sorted(vars(member).items()) if not k.startswith("_") and callable(v)]
    paragraphs = []
    for doc in filter(None, docs):
        for block in re.split(r"\n\s*\n", doc):
            lines = block.splitlines()
            if lines and not any(line.startswith((" ", "\t", ">>>")) for line in lines):
                paragraphs.append(" ".join(line.strip() for line in lines))
    return paragraphs


def doc_sentences(count: int, seed: int, min_words: int = 8, max_words: int = 40) -> list[str]:
    """``count`` distinct prose sentences of ``min_words``..``max_words`` words, chosen by ``seed``: from
    pydoc_data's topics first, then from the docstrings of DOCSTRING_MODULES as far as needed."""
    from pydoc_data.topics import topics

    from pagebatch.jobs.bench.workloads import _prose_paragraphs

    def keep(found: dict[str, None], paragraphs: list[str]) -> None:
        for paragraph in paragraphs:
            for sentence in _sentences(paragraph):
                if min_words <= len(sentence.split()) <= max_words and sentence[-1] in ".?!:":
                    found.setdefault(sentence, None)

    docs: dict[str, None] = {}
    for name in sorted(topics):
        keep(docs, _prose_paragraphs(topics[name]))
    rng = random.Random(seed)
    if len(docs) >= count:
        return rng.sample(list(docs), count)
    more: dict[str, None] = {}
    for module in DOCSTRING_MODULES:
        keep(more, _docstring_paragraphs(module))
    extra = [s for s in more if s not in docs]
    if len(docs) + len(extra) < count:
        raise SystemExit(f"found {len(docs) + len(extra)} prose sentences of {min_words}-{max_words} words in "
                         "Python's docs and docstrings; ask for at most that many")
    rows = list(docs) + rng.sample(extra, count - len(docs))
    rng.shuffle(rows)
    return rows
