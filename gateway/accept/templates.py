"""Notification templates, rendered in a Jinja2 sandbox at accept time.

A caller's params are data, never code: the sandbox refuses attribute tricks, and
strict undefined turns a missing parameter into an error the caller sees instead of
an empty gap in a message someone pays to send.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import jinja2
from jinja2 import meta
from jinja2.sandbox import SandboxedEnvironment

from gateway.core.config import ConfigError, TemplateSettings
from router.domain import Channel


class TemplateRenderError(Exception):
    """A template could not be rendered with the given params."""

    def __init__(self, missing: list[str], detail: str = "") -> None:
        self.missing = missing
        self.detail = detail
        super().__init__(detail or f"missing params: {', '.join(missing)}")


@dataclass(frozen=True, slots=True)
class _Compiled:
    template: jinja2.Template
    variables: frozenset[str]


class TemplateCatalog:
    """The configured templates, compiled once at start (a syntax error stops the start)."""

    def __init__(self, templates: Mapping[str, TemplateSettings]) -> None:
        self._env = SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)
        self._templates: dict[str, tuple[_Compiled, dict[Channel, _Compiled]]] = {}
        for template_id, spec in templates.items():
            default = self._compile(template_id, spec.body)
            per_channel = {
                channel: self._compile(f"{template_id}.channels.{channel.value}", body)
                for channel, body in spec.channel_bodies.items()
            }
            self._templates[template_id] = (default, per_channel)

    def _compile(self, where: str, source: str) -> _Compiled:
        try:
            parsed = self._env.parse(source)
            variables = frozenset(meta.find_undeclared_variables(parsed))
            return _Compiled(self._env.from_string(source), variables)
        except jinja2.TemplateSyntaxError as exc:
            raise ConfigError(f"template {where} has a syntax error: {exc.message}") from exc

    def __contains__(self, template_id: object) -> bool:
        return template_id in self._templates

    def variables(self, template_id: str) -> frozenset[str]:
        """Every param any of the template's bodies uses (its default and per-channel ones)."""
        default, per_channel = self._templates[template_id]
        return default.variables.union(*(c.variables for c in per_channel.values()))

    def render(
        self, template_id: str, params: Mapping[str, str], channels: tuple[Channel, ...]
    ) -> dict[Channel, str]:
        """Render the template for each channel; raises :class:`TemplateRenderError`."""
        default, per_channel = self._templates[template_id]
        chosen = {channel: per_channel.get(channel, default) for channel in channels}
        needed: set[str] = set()
        for compiled in chosen.values():
            needed |= compiled.variables
        missing = sorted(needed - set(params))
        if missing:
            raise TemplateRenderError(missing)
        rendered: dict[Channel, str] = {}
        for channel, compiled in chosen.items():
            try:
                rendered[channel] = compiled.template.render(dict(params))
            except jinja2.TemplateError as exc:
                # SecurityError and friends: params can't run code, and the caller learns why.
                raise TemplateRenderError([], f"template could not be rendered: {exc}") from exc
        return rendered
