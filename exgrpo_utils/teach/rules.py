"""The Explanatory Inversion rules as data (``configs/rules/ei_rules.yaml`` by default)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from ..infra.paths import PROJECT_ROOT

DEFAULT_RULES_FILE = PROJECT_ROOT / "configs" / "rules" / "ei_rules.yaml"
REQUIRED_TEMPLATES = ("answer_instruction", "probe", "answer")


@dataclass(frozen=True)
class Rule:
    id: str
    number: int
    name: str
    description: str
    example_original: str
    example_augmented: str
    source: str = "kit default"


@dataclass(frozen=True)
class RuleSet:
    version: str
    preamble: str
    rules: tuple[Rule, ...]
    templates: dict
    path: str

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(r.id for r in self.rules)

    def by_id(self, rule_id: str) -> Rule:
        for r in self.rules:
            if r.id == rule_id:
                return r
        raise KeyError(f"{self.path}: no rule {rule_id!r}; rules: {', '.join(r.id for r in self.rules)}")

    @property
    def content(self) -> dict:
        """Everything that shapes prompts (for fingerprints; the file path is not part of it)."""
        return {"version": self.version, "preamble": self.preamble, "rules": [asdict(r) for r in self.rules],
                "templates": self.templates}

    def subset(self, ids) -> "RuleSet":
        if not ids:
            return self
        return RuleSet(self.version, self.preamble, tuple(self.by_id(i) for i in ids), self.templates, self.path)

    def probe_prompt(self, rule: Rule, *, question: str, answer: str, reasoning: str) -> str:
        return self.templates["probe"].format(
            preamble=self.preamble, rule_name=rule.name, rule_description=rule.description,
            example_original=rule.example_original, example_augmented=rule.example_augmented,
            question=question, answer=answer, reasoning=reasoning)

    def answer_prompt(self, probe: str) -> str:
        return self.templates["answer"].format(probe=probe, answer_instruction=self.templates["answer_instruction"].strip())


def load_rules(path: str | Path | None = None) -> RuleSet:
    """Read and check a rules file; every problem names the file and the field."""

    path = Path(path) if path else DEFAULT_RULES_FILE
    if not path.exists():
        raise FileNotFoundError(f"rules file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    for key in ("preamble", "rules", "templates"):
        if key not in raw:
            raise ValueError(f"{path}: missing top-level field {key!r}")
    rules, seen = [], set()
    for i, r in enumerate(raw["rules"]):
        where = f"{path}: rules[{i}]"
        if not isinstance(r, dict):
            raise ValueError(f"{where}: expected a mapping")
        for key in ("id", "name", "description", "example"):
            if not r.get(key):
                raise ValueError(f"{where}: missing field {key!r}")
        ex = r["example"]
        if not isinstance(ex, dict) or not ex.get("original") or not ex.get("augmented"):
            raise ValueError(f"{where}.example: needs 'original' and 'augmented'")
        if r["id"] in seen:
            raise ValueError(f"{where}: duplicate rule id {r['id']!r}")
        seen.add(r["id"])
        rules.append(Rule(id=str(r["id"]), number=int(r.get("number", i + 1)), name=str(r["name"]),
                          description=str(r["description"]), example_original=str(ex["original"]),
                          example_augmented=str(ex["augmented"]), source=str(r.get("source", "kit default"))))
    templates = raw["templates"]
    for key in REQUIRED_TEMPLATES:
        if not isinstance(templates, dict) or not templates.get(key):
            raise ValueError(f"{path}: templates.{key} is missing")
    return RuleSet(str(raw.get("version", "unversioned")), str(raw["preamble"]).strip(), tuple(rules), dict(templates), str(path))
