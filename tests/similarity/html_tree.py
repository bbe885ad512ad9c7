"""A minimal HTML tree for tests, built with the standard library's html.parser (no regexes)."""

import dataclasses
import html.parser

VOID = {'area', 'base', 'br', 'col', 'embed', 'hr', 'img', 'input', 'link', 'meta', 'source',
        'track', 'wbr'}


@dataclasses.dataclass
class Element:
  tag: str
  attrs: dict
  children: list = dataclasses.field(default_factory=list)  # Elements and strings

  def text(self) -> str:
    return ''.join(c if isinstance(c, str) else c.text() for c in self.children)

  def iter(self, tag=None, cls=None):
    """Every descendant element (depth first), optionally only of a tag and a class."""
    for child in self.children:
      if isinstance(child, Element):
        if (tag is None or child.tag == tag) and (
            cls is None or cls in child.attrs.get('class', '').split()):
          yield child
        yield from child.iter(tag, cls)


class _Builder(html.parser.HTMLParser):

  def __init__(self):
    super().__init__(convert_charrefs=True)
    self.root = Element('document', {})
    self.stack = [self.root]

  def handle_starttag(self, tag, attrs):
    element = Element(tag, {k: v or '' for k, v in attrs})
    self.stack[-1].children.append(element)
    if tag not in VOID:
      self.stack.append(element)

  def handle_startendtag(self, tag, attrs):
    self.stack[-1].children.append(Element(tag, {k: v or '' for k, v in attrs}))

  def handle_endtag(self, tag):
    assert tag not in VOID, f'</{tag}> closes a void element'
    assert self.stack[-1].tag == tag, f'</{tag}> closes <{self.stack[-1].tag}>'
    self.stack.pop()

  def handle_data(self, data):
    self.stack[-1].children.append(data)


def parse(text: str) -> Element:
  """The document's tree; asserts every element is closed in order."""
  builder = _Builder()
  builder.feed(text)
  builder.close()
  assert builder.stack == [builder.root], f'unclosed: {[e.tag for e in builder.stack[1:]]}'
  return builder.root
