r"""mkdocs hooks of the docs site (mkdocs.yml: ``hooks: [docs/hooks.py]``).

* ``on_files``: the files that live outside ``docs/`` (the studies' tables and figures, benchmarks/RESULTS.md, the
  changelog) join the site at their repository paths, read in place: nothing is copied into ``docs/``.
* ``on_page_markdown``: links of text included from elsewhere (README.md sections, through the include-markdown
  plugin) are re-pointed from repository paths to site pages, so ``docs/declaring_models.md`` becomes
  ``declaring_models.md``; a link to a file that is not in the site is left as it is and fails the strict build.
  The ``<!-- cli-reference -->`` marker is replaced by every ``pyro-vae`` subcommand's ``--help``, rendered from
  ``pyro_vae.cli.build_parser()`` at build time, so the CLI reference cannot drift from the parser.
  In table rows, ``\|`` inside code spans (GitHub's escape) becomes ``|``.
* ``on_page_content``: the maths (``\(...\)`` and ``\[...\]``, kept as TeX by ``pymdownx.arithmatex``) becomes
  MathML at build time (``latex2mathml``), which browsers render natively: the site's maths needs no script and
  no network.  TeX that ``latex2mathml`` cannot read fails the build, naming the page and the formula.
"""
import glob
import html
import os
import posixpath
import re

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# files outside docs/ that the site serves, at their repository paths
EXTERNAL = ["CHANGELOG.md", "benchmarks/RESULTS.md", "experiments/results/*/*/table.md",
            "experiments/results/*/*/*.png"]
# GitHub unescapes "\|" inside a table's code spans, Python-Markdown keeps the backslash (and needs no escape there)
TABLE_ROW = re.compile(r"^\|.*\|[ \t]*$", re.M)
CODE = re.compile(r"`[^`]+`")
CLI_MARKER = "<!-- cli-reference -->"
LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)(\))")
# pymdownx.arithmatex's generic output: <span class="arithmatex">\(TeX\)</span>, <div class="arithmatex">\[TeX\]</div>
MATH = re.compile(r'<(span|div) class="arithmatex">\\[(\[](.*?)\\[)\]]</\1>', re.S)


def on_files(files, config):
    for pattern in EXTERNAL:
        paths = sorted(glob.glob(os.path.join(ROOT, pattern)))
        if not paths:
            raise FileNotFoundError(f"docs/hooks.py: no file matches {pattern!r} (the site serves it)")
        for path in paths:
            rel = os.path.relpath(path, ROOT).replace(os.sep, "/")
            files.append(File(rel, ROOT, config["site_dir"], config["use_directory_urls"]))
    return files


def repo_path(page_file) -> str:
    """Where a page's source lives in the repository (docs/x.md, or an external file's own path)."""
    docs = os.path.abspath(os.path.join(ROOT, "docs"))
    return os.path.relpath(page_file.abs_src_path, ROOT).replace(os.sep, "/") \
        if not os.path.abspath(page_file.abs_src_path).startswith(docs + os.sep) \
        else "docs/" + page_file.src_uri


def readme_sections(config):
    """{anchor of a README heading: the page (src uri) that includes it}, from the pages' include-markdown lines."""
    from markdown.extensions.toc import slugify

    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    headings = [(m.start(), slugify(m.group(1).strip(), "-")) for m in re.finditer(r"^#{2,6} (.+)$", readme, re.M)]
    where = {}
    docs = os.path.join(ROOT, "docs")
    for page in sorted(glob.glob(os.path.join(docs, "**", "*.md"), recursive=True)):
        text = open(page, encoding="utf-8").read()
        for rest in re.findall(r'\{%\s*include-markdown\s+"[^"]*README\.md"([^%]*)%\}', text):
            start = re.search(r'start="([^"]+)"', rest)
            end = re.search(r'end="([^"]+)"', rest)
            lo = readme.index(start.group(1)) if start else 0
            hi = readme.index(end.group(1), lo) if end else len(readme)
            for at, slug in headings:
                if lo <= at < hi:
                    where.setdefault(slug, os.path.relpath(page, docs).replace(os.sep, "/"))
    return where


def on_page_markdown(markdown, page, config, files):
    here = repo_path(page.file)
    from markdown.extensions.toc import slugify
    own = {slugify(h.strip(), "-") for h in re.findall(r"^#{1,6} (.+)$", markdown, re.M)}
    sections = readme_sections(config)

    def repoint(match):
        target = match.group(2)
        if target.startswith("#") and target[1:] not in own and target[1:] in sections:
            # a README section's anchor, now on another page of the site
            new = posixpath.relpath(sections[target[1:]], posixpath.dirname(page.file.src_uri) or ".")
            return match.group(1) + new + target + match.group(3)
        if re.match(r"^[a-z][a-z0-9+.-]*:|^#|^/", target):        # a URL, an anchor, an absolute path
            return match.group(0)
        path, _, anchor = target.partition("#")
        if not path:
            return match.group(0)
        in_repo = posixpath.normpath(posixpath.join(posixpath.dirname(here), path))
        in_site = in_repo[len("docs/"):] if in_repo.startswith("docs/") else in_repo
        if files.get_file_from_path(in_site) is None:
            return match.group(0)              # not in the site: mkdocs --strict reports it
        new = posixpath.relpath(in_site, posixpath.dirname(page.file.src_uri) or ".")
        return match.group(1) + new + ("#" + anchor if anchor else "") + match.group(3)

    markdown = LINK.sub(repoint, markdown)
    markdown = TABLE_ROW.sub(lambda row: CODE.sub(lambda c: c.group(0).replace("\\|", "|"), row.group(0)), markdown)
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    return markdown


def cli_reference() -> str:
    """Markdown: ``pyro-vae --help``, then one section per subcommand with its ``--help``."""
    import argparse

    from pyro_vae.cli import build_parser

    os.environ["COLUMNS"] = "100"          # argparse wraps help at the terminal's width: make it fixed
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    parts = ["### pyro-vae", "", "```text", parser.format_help().rstrip(), "```", ""]
    for name, subparser in sub.choices.items():
        parts += [f"### pyro-vae {name}", "", "```text", subparser.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


def on_page_content(html_text, page, config, files):
    from latex2mathml.converter import convert as tex_to_mathml   # the docs extra; imported when a page is built

    def mathml(match):
        tex = html.unescape(match.group(2)).strip()
        try:
            out = tex_to_mathml(tex, display="block" if match.group(1) == "div" else "inline")
        except Exception as e:  # noqa: BLE001 - whatever latex2mathml raises, the build must say where
            raise PluginError(f"{page.file.src_path}: latex2mathml cannot convert {tex!r}: {e}") from e
        if "<mi>&</mi>" in out:   # an environment it does not know (aligned, gathered) prints its & as text
            raise PluginError(f"{page.file.src_path}: latex2mathml shows the alignment marks of {tex[:60]!r}... as "
                              f"text; write the environment as split or align*")
        return out
    return MATH.sub(mathml, html_text)
