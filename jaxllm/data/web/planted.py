"""Planted test cases mixed into the real pages: each exercises one stage or one kind of bad input."""
from __future__ import annotations

ARTICLE = """<p>Web archives began as an effort to keep a record of a medium that changes every day. When a
library decides to preserve a newspaper, it can put the printed copy on a shelf, but a website has no
single printed form, and the pages that people read this morning may be gone by the evening. The
people who built the first crawlers understood that the only practical way to keep the web was to
visit each page, save what the server returned, and write it down together with the time and the
address of the request.</p>
<p>That simple idea led to a file format that is still in use. Each record holds the headers of the
request and of the response, followed by the body of the page, so that a later reader can see not
only the text but also how it was served. Because the records are written one after another and
compressed one at a time, a damaged record does not spoil the rest of the file, and a program can
jump straight to the record it needs.</p>
<p>Researchers soon found other uses for these collections. Linguists counted how words spread from
one community to another, historians traced the rise and fall of early online shops, and engineers
used the pages to teach computers to read. For that last purpose the raw pages are not enough: most
of what a browser shows is navigation, advertising and repeated templates, and the useful text has
to be separated from the rest before it is of any value to a model.</p>
<p>Cleaning the pages is therefore a chain of small decisions. The first removes addresses that are
known to serve harmful material. The next extracts the main text and throws away menus and footers.
Then the language of each page is identified, pages that repeat themselves or contain little real
prose are set aside, and finally copies of the same page that were found under different addresses
are merged, so that the model does not read the same story many times over.</p>"""

NEAR_DUP_EDITS = (("every day", "each day"), ("this morning", "this afternoon"),
                  ("is still in use", "is still widely used"))

PII_ARTICLE = """<p>The support team of the regional library can be reached in several ways, and the
notes below explain which one to use for each kind of question. For questions about your account,
write to helpdesk.team@library-example.org or to maria.gonzalez@example.com, and the staff will answer
within two working days. If the matter is urgent, call the front desk at (555) 123-4567 or the
after-hours line at 555-987-6543; visitors from abroad can dial +44 20 7946 0958.</p>
<p>The catalogue server moved in 2023 and now answers at 192.168.10.42 inside the building, while the
public mirror lives at 203.0.113.77, and it still runs version 3.11.2 of the search software on port
5432. A form that was filed by mistake listed the social security number 123-45-6789, which has since
been removed from the records. The library holds 1,250,000 books and 48,000 maps, and the annual fee
of $19.99 has not changed since 2019.</p>
<p>When you write to the team, please describe the problem in a few sentences, give the title of the
book or map you were looking for, and say which branch you visited. The staff read every message and
are happy to help with research questions as well as with problems that have to do with the website
or with the reading rooms.</p>"""

PII_SECRETS = ("helpdesk.team@library-example.org", "maria.gonzalez@example.com", "(555) 123-4567",
               "555-987-6543", "+44 20 7946 0958", "192.168.10.42", "203.0.113.77", "123-45-6789")
PII_ORDINARY = ("2023", "3.11.2", "5432", "1,250,000", "48,000", "$19.99", "2019")

BOILERPLATE = """<header><nav><ul><li><a href="/">Home</a></li><li><a href="/products">Products</a></li>
<li><a href="/about">About us</a></li><li><a href="/contact">Contact</a></li><li><a href="/login">Log in</a>
</li></ul></nav></header><div class="cookie">This site uses cookies. <a href="/privacy">Privacy policy</a>
</div><footer><p>Copyright 2024 Example Corp. All rights reserved.</p><ul><li><a href="/terms">Terms of
use</a></li><li><a href="/sitemap">Sitemap</a></li></ul></footer>"""

GERMAN = """<p>Die Bibliothek der Stadt wurde im Jahr 1892 gegründet und gehört heute zu den größten
öffentlichen Sammlungen des Landes. In den Lesesälen stehen mehr als eine Million Bücher, Karten und
Zeitschriften, die jeder Besucher kostenlos benutzen kann. Wer ein Buch ausleihen möchte, braucht
einen Ausweis, den man an der Information im Erdgeschoss erhält.</p><p>Jedes Jahr veranstaltet die
Bibliothek Lesungen, Ausstellungen und Kurse für Kinder und Erwachsene. Die Mitarbeiterinnen und
Mitarbeiter helfen gern bei der Suche nach Literatur und erklären, wie man die digitalen Angebote
nutzt, die auch von zu Hause aus erreichbar sind.</p>"""

FRENCH = """<p>La bibliothèque municipale a été fondée en 1892 et compte aujourd'hui parmi les plus
grandes collections publiques du pays. Les salles de lecture abritent plus d'un million de livres, de
cartes et de revues que chaque visiteur peut consulter gratuitement. Pour emprunter un livre, il faut
une carte de lecteur que l'on obtient à l'accueil au rez-de-chaussée.</p><p>Chaque année, la
bibliothèque organise des lectures, des expositions et des ateliers pour les enfants et les adultes.
Le personnel aide volontiers à chercher des ouvrages et explique comment utiliser les services
numériques, accessibles aussi depuis la maison.</p>"""

REPETITIVE = "<p>" + ("Our shop has the best prices on watches and the fastest delivery in the whole country, "
                      "so order your new watch from us today. ") * 40 + "</p>"

LATIN1 = """<p>The café on the corner of the market square opened in 1998, and its owner still bakes the
bread herself before dawn. Regulars come for the crème brûlée, which she learned to make during a year
in Lyon, and for the strong coffee that is served in thick white cups. On weekdays the room fills with
students from the nearby school, who share a table and a plate of pastries while they finish their
homework.</p><p>In the summer the tables move outside, and the square becomes a small garden of
umbrellas. Tourists ask for the recipe of the tarte aux pommes, but the owner only smiles and says
that the secret is patience. She has never advertised the café, and she does not plan to start now,
because the people who find it tend to come back.</p>""".encode("cp1252")


def page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title></head>"
            f"<body><nav><a href=\"/\">Home</a> | <a href=\"/blog\">Blog</a></nav><main><article>"
            f"<h1>{title}</h1>{body}</article></main><footer>Example site footer</footer></body></html>")


def near_dup(html: str) -> str:
    for a, b in NEAR_DUP_EDITS:
        html = html.replace(a, b, 1)
    return html


def planted_records() -> list[dict]:
    """Planted documents: {url, body (bytes), content_type, shard (or None = any), expect}.

    `expect` names the stage and reason that should remove it, or "keep".
    """
    art = page("A short history of web archives", ARTICLE)
    pii = page("How to contact the library", PII_ARTICLE)
    r = []

    def add(url, body, expect, ctype="text/html; charset=utf-8", shard=None):
        r.append({"url": url, "body": body if isinstance(body, bytes) else body.encode("utf-8"),
                  "content_type": ctype, "shard": shard, "expect": expect})

    add("https://blog.example.org/2024/web-archives.html", art, "keep", shard=0)
    add("https://mirror.example.net/blog/web-archives.html", art, "dedup:exact_duplicate", shard=1)
    add("https://news.example.com/archives/history.html", near_dup(art), "dedup:near_duplicate", shard=1)
    add("https://library.example.org/contact.html", pii, "keep", shard=0)
    add("https://free-casino-bonus.example/win-now.html", art, "url_filter:blocklisted_domain")
    add("https://cdn.malware.wicar.org/data/page.html", art, "url_filter:blocklisted_domain")
    add("https://videos.example.com/porn/clip-1.html", art, "url_filter:banned_word")
    add("https://shop.example.com/products/index.html", page("Example Corp", "") .replace(
        "<main>", BOILERPLATE + "<main>"), "drop")
    add("https://www.example.de/bibliothek.html", page("Stadtbibliothek", GERMAN), "language:language_de")
    add("https://www.example.fr/bibliotheque.html", page("Bibliothèque", FRENCH), "language:language_fr")
    add("https://watches.example.com/cheap.html", page("Cheap watches", REPETITIVE), "gopher_repetition")
    add("https://files.example.org/report.pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n" * 20,
        "decode:not_html", ctype="application/pdf")
    add("https://img.example.org/logo.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "decode:not_html",
        ctype="image/png")
    add("https://old.example.fr/cafe.html", b"<html><body>" + LATIN1 + b"</body></html>", "keep",
        ctype="text/html; charset=utf-8")  # declared UTF-8, really cp1252: repaired, counted as a note
    add("https://old.example.com/nocharset.html", near_dup(near_dup(art)).replace(
        "Web archives began", "Archives of the web began").encode("utf-8"), "dedup:near_duplicate",
        ctype="text/html")
    add("https://empty.example.org/", b"", "decode:empty")
    return r


def huge_page(size: int = 50 * 1024 * 1024) -> dict:
    """A 50 MB page: must be skipped as `too_large` without exhausting memory or time."""
    chunk = b"<p>" + b"All work and no play makes Jack a dull boy. " * 20 + b"</p>\n"
    body = b"<html><body>" + chunk * (size // len(chunk) + 1) + b"</body></html>"
    return {"url": "https://huge.example.org/big.html", "body": body, "content_type": "text/html",
            "shard": None, "expect": "read:too_large"}
