"""Documents in and out: client files (.pdf .docx .xlsx .pptx .html .csv .md .txt, or a folder of
them) to Markdown for the prompt, and a run's Markdown to branded Word and PDF deliverables.
The only importer of document libraries; each is imported when first needed, so commands that
never touch a document never load one.

Why these libraries (compared on this package's sample documents; our own figures come from
benchmarks/documents.py):

- Reading: pypdf, python-docx, openpyxl and python-pptx, with HTML, CSV and text read by the
  standard library (no extra needed). markitdown converts the same formats but installs
  341 MB (onnxruntime, numpy, pandas, pdfminer...) against 54 MB, takes 20 s and 160 MB for a
  100-page PDF (pypdf: under 1 s, 52 MB), drops a Word title and PowerPoint bullet levels,
  and writes neither .docx nor .pdf. pdfplumber finds table structure in PDFs but takes 8.6 s
  and 658 MB on the same PDF (pypdf: 0.4 s, 31 MB) and needs the compiled pypdfium2. pypdf
  is pure Python, tells encrypted files apart and bounds its own decompression. Our readers
  keep headings, lists, bold and italics, and turn every table (Word, Excel, PowerPoint,
  HTML, CSV) into a Markdown table, so each cell's text reaches the prompt; a PDF has only
  positioned text, so its table cells arrive in reading order.
- Writing: python-docx (shared with reading) for .docx, honouring a tenant's template; reportlab
  (pure-Python wheel) for .pdf: it lays out paragraphs, lists and tables that split across
  pages, with outlines, and needs no browser or system library. fpdf2 does the same job but
  depends on fontTools (36 MB installed, against reportlab's 9 MB) and raises on a table
  column too narrow for one character. Fonts: DejaVu Sans, cut down to the Latin, Greek,
  Cyrillic and symbol blocks (1.2 MB), ship in ``fonts/`` so PDFs show more than Latin-1.
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
from dworkers.documents.docx_writer import render_docx
from dworkers.documents.limits import (
    DEFAULT_LIMITS,
    DOCS_EXTRA_HINT,
    DocumentError,
    DocumentLimits,
    MissingExtraError,
)
from dworkers.documents.pdf_writer import render_pdf
from dworkers.documents.render import Section

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
    "Section",
    "convert_path",
    "folder_to_markdown",
    "is_document",
    "render_docx",
    "render_pdf",
    "to_markdown",
]
