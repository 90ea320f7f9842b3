"""Sources: where images come from, as class names plus per-split sample lists."""
from .builtin import digits_source, fmnist_source
from .common import Sample, Source, cap_per_class
from .folder import folder_source
from .lists import fgvc_source, vtab_source

__all__ = ["Sample", "Source", "cap_per_class", "digits_source", "fmnist_source", "fgvc_source",
           "folder_source", "vtab_source"]
