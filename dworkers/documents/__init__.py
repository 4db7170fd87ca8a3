"""Documents in and out: client files (.pdf .docx .xlsx .pptx .html .csv .md .txt, or a folder of
them) to Markdown for the prompt, and a run's Markdown to branded Word and PDF deliverables.
The only importer of document libraries; each is imported when first needed, so commands that
never touch a document never load one.

Why these libraries (compared for this package; the figures are in benchmarks/documents.py):

- Reading: pypdf, python-docx, openpyxl and python-pptx, with HTML, CSV and text read by the
  standard library (no extra needed). markitdown converts the same formats with similar quality
  but brings onnxruntime, numpy, pandas, pdfminer and more: 341 MB installed against about
  50 MB, and it still writes neither .docx nor .pdf. pdfplumber finds table structure in PDFs
  but needs pdfminer.six and the compiled pypdfium2 and is several times slower per page;
  pypdf is pure Python, reads encrypted files' flags, and bounds its own decompression. Our
  own readers keep headings, lists, bold and italics, and turn every table (Word, Excel,
  PowerPoint, HTML, CSV) into a Markdown table, so each cell's text reaches the prompt.
- Writing: python-docx (shared with reading) for .docx, honouring a tenant's template; reportlab
  (pure-Python wheel) for .pdf: it lays out paragraphs, lists and tables that split across
  pages, with outlines, and needs no browser or system library. fpdf2 does the same job but
  depends on fontTools (36 MB installed, against reportlab's 9 MB) and fails outright on a
  table column too narrow for one character. Fonts: DejaVu Sans, cut down to the Latin, Greek,
  Cyrillic and symbol blocks (1.3 MB), ship in ``fonts/`` so PDFs show more than Latin-1.
- Markdown is parsed with markdown-it-py, which rich already installs: any text at all parses,
  so a model's answer that is not valid Markdown never breaks a deliverable.

Everything that needs the extra raises an error naming it (``pip install 'dworkers[docs]'``)
when it is missing. Every file is untrusted: see ``safety`` and ``limits`` for the bounds.
"""

from __future__ import annotations

from dworkers.documents.cache import ConversionCache
from dworkers.documents.convert import (
    SUPPORTED_SUFFIXES,
    ConvertedDocument,
    ConvertedFolder,
    DocumentFile,
    convert_path,
    folder_to_markdown,
    is_document,
    to_markdown,
)
from dworkers.documents.limits import (
    DEFAULT_LIMITS,
    DOCS_EXTRA_HINT,
    DocumentError,
    DocumentLimits,
    MissingExtraError,
)

__all__ = [
    "DEFAULT_LIMITS",
    "DOCS_EXTRA_HINT",
    "SUPPORTED_SUFFIXES",
    "ConversionCache",
    "ConvertedDocument",
    "ConvertedFolder",
    "DocumentError",
    "DocumentFile",
    "DocumentLimits",
    "MissingExtraError",
    "convert_path",
    "folder_to_markdown",
    "is_document",
    "to_markdown",
]
