# Sources defined outside sources.py register themselves on import; importing them here makes
# every scheme known wherever ptlab.data is used.
from ptlab.data import longtail  # noqa: F401
