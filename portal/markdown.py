"""Markdown of untrusted text (LLM output, prompts) to sanitised HTML: the portal's one renderer.

    from portal.markdown import render
    html = render(text)          # safe to insert into a page as is

CommonMark with tables; ``$…$``/``$$…$$`` and ``\\(…\\)``/``\\[…\\]`` as MathML (latex2mathml);
fenced code highlighted by Pygments with CSS classes (``static/portal/pygments.css``, light and dark,
from :func:`pygments_css`). Raw HTML in the text is shown as text, never interpreted. The result
then goes through nh3 with an explicit allow-list: no script, no event handlers, no style, no forms
or frames, links only to http(s) and mailto (with ``rel="noopener noreferrer nofollow"``), and no
images at all (an image becomes a link to it, so nothing is fetched behind the reader's back).
"""

from __future__ import annotations

import html
import re
from functools import cache
from typing import TYPE_CHECKING

import nh3
from pygments.token import STANDARD_TYPES

if TYPE_CHECKING:
    from markdown_it import MarkdownIt
    from markdown_it.renderer import RendererHTML
    from markdown_it.token import Token
    from markdown_it.utils import EnvType, OptionsDict
    from pygments.formatters import HtmlFormatter

# markdown-it, its plugins, Pygments' lexers and formatters and latex2mathml are imported on the
# first render: a web process that serves only the API never loads them (about 8 MB).

__all__ = ["render", "pygments_css"]

MAX_MATH = 2000  # characters of TeX per formula: latex2mathml is not built for hostile input
_LANG = re.compile(r"^[A-Za-z0-9_+#.-]{1,32}$")
_SAFE_HREF = re.compile(r"^(https?://|mailto:)", re.IGNORECASE)

_HTML_TAGS = {
    "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "ul", "ol", "li", "strong", "em",
    "code", "pre", "a", "table", "thead", "tbody", "tr", "th", "td", "div", "span", "del", "s",
}  # fmt: skip
_MATHML_TAGS = {
    "math", "semantics", "mrow", "mi", "mn", "mo", "ms", "mtext", "mspace", "msup", "msub", "msubsup",
    "mfrac", "msqrt", "mroot", "mover", "munder", "munderover", "mtable", "mtr", "mtd", "mstyle",
    "menclose", "mpadded", "mphantom", "mfenced",
}  # fmt: skip
# Presentation attributes only: no href (MathML links), no style, no mathcolor/mathbackground.
_MATHML_ATTRIBUTES = {
    "display", "xmlns", "mathvariant", "stretchy", "fence", "separator", "lspace", "rspace", "width",
    "height", "depth", "linethickness", "accent", "accentunder", "movablelimits", "largeop", "symmetric",
    "minsize", "maxsize", "notation", "columnalign", "rowalign", "columnspacing", "rowspacing",
    "columnlines", "rowlines", "frame", "displaystyle", "scriptlevel", "open", "close", "separators",
}  # fmt: skip
_ATTRIBUTES: dict[str, set[str]] = {
    "a": {"href", "title"},
    "th": {"align"},
    "td": {"align"},
    "ol": {"start"},
    "code": {"data-lang"},
    **{tag: set(_MATHML_ATTRIBUTES) for tag in _MATHML_TAGS},
}
_CLASSES: dict[str, set[str]] = {
    "span": {name for name in STANDARD_TYPES.values() if name},
    "div": {"highlight", "codeblock", "math-block"},
    "pre": set(),
    "code": set(),
}
# Removed with everything inside them (the rest of the unknown tags are unwrapped to their text).
_DROP_WITH_CONTENT = {
    "script", "style", "template", "iframe", "object", "embed", "svg", "noscript", "textarea", "select",
    "xmp", "noembed", "noframes", "title", "head",
}  # fmt: skip


def _attribute_filter(tag: str, attr: str, value: str) -> str | None:
    # nh3 already checks the scheme; this also drops relative and scheme-less links, which have no
    # business in model output and could point at this site's own endpoints.
    if attr == "href":
        return value if _SAFE_HREF.match(value.strip()) else None
    if tag == "code" and attr == "data-lang":
        return value if _LANG.match(value) else None
    if attr == "xmlns":
        return value if value == "http://www.w3.org/1998/Math/MathML" else None
    return value


_CLEANER = nh3.Cleaner(
    tags=_HTML_TAGS | _MATHML_TAGS,
    clean_content_tags=_DROP_WITH_CONTENT,
    attributes=_ATTRIBUTES,
    attribute_filter=_attribute_filter,
    strip_comments=True,
    link_rel="noopener noreferrer nofollow",
    url_schemes={"http", "https", "mailto"},
    allowed_classes=_CLASSES,
)


def _fence(self: RendererHTML, tokens: list[Token], idx: int, options: OptionsDict, env: EnvType) -> str:
    from pygments import highlight
    from pygments.lexers import get_lexer_by_name
    from pygments.util import ClassNotFound

    token = tokens[idx]
    lang = token.info.strip().split(maxsplit=1)[0] if token.info.strip() else ""
    lang = lang if _LANG.match(lang) else ""
    try:
        lexer = get_lexer_by_name(lang) if lang else None
    except ClassNotFound:
        lexer = None
    if lexer is None:
        body = f'<div class="highlight"><pre><code>{html.escape(token.content)}</code></pre></div>'
    else:
        body = highlight(token.content, lexer, _formatter())
    label = f'<code data-lang="{html.escape(lang)}"></code>' if lang else ""
    return f'<div class="codeblock">{label}{body}</div>\n'


def _image(self: RendererHTML, tokens: list[Token], idx: int, options: OptionsDict, env: EnvType) -> str:
    # Never an <img>: an external image is a beacon that reports the reader's visit.
    token = tokens[idx]
    src = str(token.attrGet("src") or "")
    alt = self.renderInlineAsText(token.children or [], options, env) or src
    return f'<a href="{html.escape(src)}">{html.escape("Image: " + alt)}</a>'


@cache
def _formatter() -> HtmlFormatter:
    from pygments.formatters import HtmlFormatter

    return HtmlFormatter(cssclass="highlight", nowrap=False)


def _math(tex: str, display: str) -> str:
    from latex2mathml.converter import convert as latex_to_mathml

    if len(tex) > MAX_MATH:
        return f"<code>{html.escape(tex)}</code>"
    try:
        mathml = latex_to_mathml(tex, display=display)
    except Exception:  # latex2mathml raises many kinds of errors on malformed TeX: show the source
        return f"<code>{html.escape(tex)}</code>"
    return f'<div class="math-block">{mathml}</div>' if display == "block" else mathml


def _math_inline(
    self: RendererHTML, tokens: list[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    return _math(tokens[idx].content, "inline")


def _math_block(self: RendererHTML, tokens: list[Token], idx: int, options: OptionsDict, env: EnvType) -> str:
    return _math(tokens[idx].content, "block") + "\n"


@cache
def _parser() -> MarkdownIt:
    from markdown_it import MarkdownIt
    from mdit_py_plugins.dollarmath import dollarmath_plugin
    from mdit_py_plugins.texmath import texmath_plugin

    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.enable("table").enable("strikethrough")
    md.use(dollarmath_plugin, double_inline=True).use(texmath_plugin, delimiters="brackets")
    md.add_render_rule("fence", _fence)
    md.add_render_rule("code_block", _fence)
    md.add_render_rule("image", _image)
    for name in ("math_inline", "math_inline_double", "math_single", "math_inline_eq"):
        md.add_render_rule(name, _math_inline)
    for name in ("math_block", "math_block_label", "math_block_eqno", "math_block_eq", "math_double"):
        md.add_render_rule(name, _math_block)
    return md


def render(text: str) -> str:
    """Sanitised HTML of the markdown ``text``: safe to insert into a page without escaping.

    Pure CPU work (tens of microseconds per kilobyte): from async code call it in a thread.
    """
    return _CLEANER.clean(_parser().render(text or ""))


def pygments_css() -> str:
    """The stylesheet of highlighted code: the default style, and monokai under a dark colour scheme."""
    from pygments.formatters import HtmlFormatter

    light = HtmlFormatter(style="default").get_style_defs(".highlight")
    dark = HtmlFormatter(style="monokai").get_style_defs(".highlight")
    indented = "\n".join("  " + line for line in dark.splitlines())
    return (
        "/* Generated by portal.markdown.pygments_css(); tests/portal/test_markdown.py checks it is current. */\n"
        f"{light}\n@media (prefers-color-scheme: dark) {{\n{indented}\n}}\n"
    )
