"""The PromQL expressions an operator's tools run: every dashboard query and every alert rule."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "flowledger.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"

# A metric selector: a name of ours (or `up`) with its optional {matchers}. Function and label
# names (rate, grpc_service) never match: they are not among these prefixes.
_SELECTOR = re.compile(
    r"\b((?:up|grpc_(?:server|client)_[a-z_]+|flowledger_[a-z_]+)(?:\{[^}]*\})?)"
)
_MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")


@dataclass(frozen=True)
class Expression:
    where: str
    expr: str


def dashboard_expressions(rate_interval: str) -> list[Expression]:
    """Each panel target, with Grafana's ``$__rate_interval`` replaced by ``rate_interval``."""
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return [
        Expression(
            f"panel {panel['title']!r} {target['refId']}",
            target["expr"].replace("$__rate_interval", rate_interval),
        )
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]


def alert_rules() -> list[Expression]:
    rules: dict[str, Any] = yaml.safe_load(ALERTS.read_text())
    return [
        Expression(rule["alert"], rule["expr"])
        for group in rules["groups"]
        for rule in group["rules"]
    ]


def selectors(expr: str) -> list[str]:
    """The metric selectors ``expr`` reads (``flowledger_x{a="b"}``, ``up{job="j"}``)."""
    return sorted(set(_SELECTOR.findall(expr)))


def split_selector(selector: str) -> tuple[str, list[str]]:
    """``name{a="x", b=~"y"}`` -> (``name``, [``a``, ``b``])."""
    name, _, matchers = selector.partition("{")
    return name, _MATCHER_LABEL.findall(matchers)
