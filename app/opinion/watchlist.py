"""The watch-list: which entities to follow and the names a text may call them by.

YAML, a list of entities (or `{entities: [...]}`), each `{entity, aliases: [...], tickers: [...]}`. Matching is
case-insensitive on word boundaries (acronyms and tickers: upper case only), takes possessives ("Yukos's", "Yukos'") and any run of spaces, hyphens or
dots inside a name; tickers match as `$TICK`, `(TICK)` or `NYSE:TICK` and, when `bare_tickers` is set, as the bare
upper-case word. An alias that would match common text (too short, a stop word, or one found in more than a small share of
general English) is an error naming it, because it would turn ordinary items into mentions.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import yaml

from moatkit.data.core.errors import ConfigError

# Words an alias must not be alone: they occur in most texts of any corpus.
_STOP = frozenset("""a an and are as at be but by for from has have he i in is it its of on or our she that the
their they this to was we were will with you group bank company market markets shares stock us uk eu""".split())


@dataclasses.dataclass(frozen=True)
class Entity:
    name: str
    aliases: tuple[str, ...]
    tickers: tuple[str, ...] = ()


def _alias_pattern(alias: str) -> str:
    words = re.split(r"[\s\-.]+", alias.strip())
    body = r"[\s\-.]*".join(re.escape(w) for w in words if w)
    return rf"(?<![\w$]){body}(?:'s|’s|'|’)?(?!\w)"


def _is_acronym(alias: str) -> bool:
    return alias.isupper() and len(alias) <= 5


def _entity_pattern(entity: Entity, bare_tickers: bool) -> str:
    """One regex per entity. Names match case-insensitively, acronyms ("GM", "LSE") and tickers only in upper
    case, so the tweet word "gm" is not General Motors."""
    names = [_alias_pattern(a) if _is_acronym(a) else f"(?i:{_alias_pattern(a)})" for a in entity.aliases]
    return "|".join(names + [_ticker_pattern(t, bare_tickers) for t in entity.tickers])


def _ticker_pattern(ticker: str, bare: bool) -> str:
    t = re.escape(ticker)
    forms = [rf"\${t}\b", rf"\({t}\)", rf"\b[A-Z]{{2,6}}:\s?{t}\b"]
    if bare:
        forms.append(rf"(?<![\w$]){t}(?!\w)")
    return "|".join(forms)


class WatchList:
    def __init__(self, entities: list[Entity], *, bare_tickers: bool = False):
        if not entities:
            raise ConfigError("the watch-list names no entities",
                              fix="list at least one: `- {entity: Acme, aliases: [Acme Corp], tickers: [ACME]}`")
        self.entities = entities
        self._names = [e.name for e in entities]
        self._patterns = [re.compile(_entity_pattern(e, bare_tickers)) for e in entities]

    @property
    def names(self) -> list[str]:
        return list(self._names)

    def match(self, text: str) -> list[str]:
        """The watched entities a text mentions, in watch-list order."""
        return [name for name, pattern in zip(self._names, self._patterns) if pattern.search(text)]

    def check_against(self, texts: list[str], *, max_share: float) -> None:
        """An alias matching more than max_share of a reference corpus is an error: it names a word, not an
        entity."""
        if not texts:
            return
        for entity in self.entities:
            for alias in entity.aliases:
                pattern = re.compile(_alias_pattern(alias), 0 if _is_acronym(alias) else re.IGNORECASE)
                hits = sum(1 for t in texts if pattern.search(t))
                if hits / len(texts) > max_share:
                    raise ConfigError(f"alias '{alias}' of '{entity.name}' matches {hits} of {len(texts)} lines of general "
                                      f"English ({hits / len(texts):.2%} > {max_share:.2%}): it is a common word, "
                                      "and would turn ordinary texts into mentions",
                                      fix="use a longer, more specific alias (e.g. the full company name)")


def _entity(raw, where: str) -> Entity:
    if isinstance(raw, str):
        raw = {"entity": raw}
    if not isinstance(raw, dict) or not str(raw.get("entity") or raw.get("name") or "").strip():
        raise ConfigError(f"{where}: each entry needs an 'entity' name", fix="e.g. `- {entity: Acme, aliases: [Acme Corp]}`")
    name = str(raw.get("entity") or raw.get("name")).strip()
    aliases = raw.get("aliases") or []
    tickers = raw.get("tickers") or []
    if not isinstance(aliases, list) or not isinstance(tickers, list):
        raise ConfigError(f"{where}: 'aliases' and 'tickers' of '{name}' must be lists", fix="e.g. aliases: [Acme Corp]")
    names = list(dict.fromkeys([name] + [str(a).strip() for a in aliases if str(a).strip()]))
    for alias in names:
        letters = re.sub(r"[\W_]", "", alias)
        if len(letters) < 2 or alias.lower() in _STOP:
            raise ConfigError(f"{where}: alias '{alias}' of '{name}' would match almost every text",
                              fix="use the company's name or a ticker (tickers: [ABC]) instead")
    bad = [t for t in tickers if not re.fullmatch(r"[A-Z0-9.]{1,8}", str(t))]
    if bad:
        raise ConfigError(f"{where}: tickers {bad} of '{name}' are not upper-case symbols", fix="e.g. tickers: [BP, VOD.L]")
    return Entity(name=name, aliases=tuple(names), tickers=tuple(str(t) for t in tickers))


def load_watchlist(path: str | Path, *, bare_tickers: bool = False) -> WatchList:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"watch-list '{path}' does not exist", fix="pass a YAML file (see docs/opinion.md)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"watch-list '{path}' is not valid YAML: {str(err).splitlines()[0]}",
                          fix="check the indentation near that line") from None
    if isinstance(raw, dict):
        raw = raw.get("entities")
    if not raw:
        raise ConfigError(f"the watch-list '{path}' names no entities", fix="add entries: `- {entity: Acme}`")
    if not isinstance(raw, list):
        raise ConfigError(f"watch-list '{path}' must be a list of entities", fix="e.g. `- {entity: Acme, aliases: [...]}`")
    entities = [_entity(item, f"{path.name} entry {n + 1}") for n, item in enumerate(raw)]
    duplicated = sorted({e.name for e in entities if [x.name for x in entities].count(e.name) > 1})
    if duplicated:
        raise ConfigError(f"watch-list '{path}' lists {duplicated} more than once", fix="merge their aliases into one entry")
    return WatchList(entities, bare_tickers=bare_tickers)
