"""Study storage that every node of a cluster reaches: a shared mount or an object store.

`--storage URI` (or `storage:` in the study) names it: a local or mounted
path, `file://`, `s3://bucket/prefix`, `gs://bucket/prefix`, `hdfs://`, or
any URI an installed fsspec file system knows. Endpoints and credentials come
from the usual environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...; for
GCS, Application Default Credentials), as every other tool reads them.

The storage holds what must outlive every node: each trial's folder
(`trials/<key>/`: curve, checkpoint, record, artifacts), the study's own files
(study.yaml, results and curves Parquet, the Optuna journal, the report) and,
shared between nodes, the frozen-feature cache. Trials work in a folder on
their own node's disk (`node_dir`) and copy each file there as it changes; the
driver copies a trial's folder into its study folder once the trial ends, so
everything downstream reads local files, as in a run without storage.

Every copy is of a whole file, and an object store's put replaces an object at
once: a reader sees an old or a new file, never half of one. Local paths get
the same by writing beside the file and renaming over it.

pyarrow (a dependency of Polars' Parquet and of Ray) is the file-system layer;
nothing here imports Ray or torch.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
import uuid
from pathlib import Path

# Where trials keep their working copies on a node, and the node's feature cache;
# default: a folder in the node's temporary directory.
NODE_DIR_ENV = "PTLAB_NODE_DIR"
FEATURES = "features"  # the shared feature cache's folder in the storage


class StorageError(ValueError):
    """A storage URI that cannot be opened; the message says how to fix it."""


def is_uri(text: str) -> bool:
    return "://" in text


def node_dir() -> Path:
    return Path(os.environ.get(NODE_DIR_ENV) or Path(tempfile.gettempdir()) / f"ptlab-node-{os.getuid()}")


class StudyStorage:
    """A folder in some file system, addressed by paths relative to it ("trials/abc/record.json")."""

    def __init__(self, uri: str):
        self.uri = uri
        self.filesystem, self.root = _open(uri)

    def __repr__(self) -> str:
        return f"StudyStorage({self.uri!r})"

    @property
    def is_local(self) -> bool:
        from pyarrow import fs

        return isinstance(self.filesystem, fs.LocalFileSystem)

    @property
    def is_object_store(self) -> bool:
        return self.filesystem.type_name in ("s3", "gcs")

    def path(self, relative: str) -> str:
        return f"{self.root}/{relative}" if relative else self.root

    def display(self, relative: str) -> str:
        """The URI a user would type for a file of the storage."""
        return f"{self.uri.rstrip('/')}/{relative}" if relative else self.uri

    def read_bytes(self, relative: str) -> bytes | None:
        """The file's content, or None where it does not exist."""
        try:
            with self.filesystem.open_input_stream(self.path(relative)) as stream:
                return stream.read()
        except FileNotFoundError:  # what pyarrow raises for a missing file or key, on every file system
            return None

    def write_bytes(self, relative: str, data: bytes) -> None:
        target = self.path(relative)
        if self.is_local:
            # beside the file, then renamed over it: a reader on another node never sees half a file
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            partial = f"{target}.{uuid.uuid4().hex[:8]}.partial"
            with open(partial, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, target)
            return
        if not self.is_object_store:  # object stores have no folders to make
            self.filesystem.create_dir(target.rsplit("/", 1)[0], recursive=True)
        with self.filesystem.open_output_stream(target) as stream:
            stream.write(data)

    def put_file(self, local: Path, relative: str) -> None:
        self.write_bytes(relative, Path(local).read_bytes())

    def put_tree(self, local: Path, relative: str) -> int:
        """Copy every file under `local` to `relative`; returns how many."""
        local = Path(local)
        files = [p for p in local.rglob("*") if p.is_file() and not p.name.endswith((".partial", ".lock", ".tmp"))]
        for path in files:
            self.put_file(path, f"{relative}/{path.relative_to(local).as_posix()}")
        return len(files)

    def files_under(self, relative: str) -> list[str]:
        """Paths (relative to `relative`) of every file below it; none where it does not exist."""
        from pyarrow import fs

        base = self.path(relative)
        infos = self.filesystem.get_file_info(fs.FileSelector(base, recursive=True, allow_not_found=True))
        return sorted(info.path[len(base) + 1:] for info in infos if info.type == fs.FileType.File
                      and not info.path.endswith(".partial"))

    def get_tree(self, relative: str, local: Path) -> int:
        """Copy every file below `relative` into `local` (each replacing its local copy at once); returns how many."""
        names = self.files_under(relative)
        for name in names:
            data = self.read_bytes(f"{relative}/{name}")
            if data is None:  # removed meanwhile
                continue
            target = Path(local) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f"{target.name}.{uuid.uuid4().hex[:8]}.partial")
            partial.write_bytes(data)
            os.replace(partial, target)
        return len(names)

    def get_file(self, relative: str, local: Path) -> bool:
        data = self.read_bytes(relative)
        if data is None:
            return False
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_name(f"{local.name}.{uuid.uuid4().hex[:8]}.partial")
        partial.write_bytes(data)
        os.replace(partial, local)
        return True

    def node_folder(self, relative: str) -> Path:
        """This node's working copy of a folder of the storage."""
        digest = hashlib.sha256(self.uri.encode()).hexdigest()[:12]
        return node_dir() / "studies" / digest / relative


@functools.cache
def open_storage(uri: str) -> StudyStorage:
    """One StudyStorage per URI and process: trials open it once, not per file."""
    return StudyStorage(uri)


def normalise_uri(text: str, relative_to: Path | None = None) -> str:
    """A storage as written by a user, made one that means the same on every node: local paths absolute."""
    text = text.strip()
    if not text:
        raise StorageError("the storage is empty: give a path every node mounts or an object-store URI "
                           "(s3://bucket/prefix)")
    if is_uri(text):
        return text.rstrip("/")
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = (relative_to or Path.cwd()) / path
    return str(path.resolve())


def _open(uri: str):
    from pyarrow import fs

    if not is_uri(uri):
        path = Path(uri)
        path.mkdir(parents=True, exist_ok=True)
        return fs.LocalFileSystem(), str(path)
    try:
        filesystem, root = fs.FileSystem.from_uri(uri)
    except (ValueError, OSError, ImportError) as arrow_error:
        try:
            import fsspec
        except ImportError:
            raise StorageError(f"storage {uri}: {arrow_error}; pyarrow knows s3://, gs://, hdfs:// and file://, "
                               "other schemes need fsspec and that scheme's package installed") from None
        try:
            spec_fs, root = fsspec.core.url_to_fs(uri)
        except (ValueError, ImportError) as err:
            raise StorageError(f"storage {uri}: {err}") from None
        filesystem = fs.PyFileSystem(fs.FSSpecHandler(spec_fs))
    return filesystem, root.rstrip("/")


class StorageMirror:
    """A folder of the storage as ptlab.files.SharedFiles: what nodes share, such as computed features."""

    def __init__(self, uri: str, folder: str):
        self.uri, self.folder = uri, folder

    def fetch(self, name: str, local: Path) -> bool:
        return open_storage(self.uri).get_file(f"{self.folder}/{name}", local)

    def publish(self, local: Path, name: str) -> None:
        open_storage(self.uri).put_file(local, f"{self.folder}/{name}")


def study_files() -> list[str]:
    """The study's own files (not its trials'), as paths in the study folder and in its storage."""
    from ptlab.study import layout

    own = [layout.STUDY_FILE, layout.PLANNED, layout.RESULTS, layout.CURVES, layout.ENSEMBLES, layout.SELECTION_FILE,
           layout.OPTUNA_JOURNAL]
    return own + [f"{layout.REFERENCE_DIR}/{name}" for name in (layout.RESULTS, layout.CURVES)]


def publish_study_files(study_dir: Path, storage: StudyStorage, experiments: bool = False) -> int:
    """Copy the study's own files and its report to the storage, and with `experiments` Ray Tune's state
    of each phase (what a driver on another machine resumes from); returns how many files."""
    from ptlab.study.layout import REPORT_DIR, RERUN_DIR, TUNE_DIR

    copied = 0
    for name in study_files():
        if (study_dir / name).is_file():
            storage.put_file(study_dir / name, name)
            copied += 1
    for folder in (REPORT_DIR, *((TUNE_DIR, RERUN_DIR) if experiments else ())):
        if (study_dir / folder).is_dir():
            copied += storage.put_tree(study_dir / folder, folder)
    return copied


def fetch_study_files(storage: StudyStorage, study_dir: Path, experiments: bool = False) -> int:
    """The study's own files from its storage into a local folder (what a report reads), with `experiments`
    also Tune's state of each phase (what `ptlab study resume` restores); returns how many."""
    from ptlab.study.layout import RERUN_DIR, STUDY_FILE, TUNE_DIR

    fetched = sum(storage.get_file(name, study_dir / name) for name in study_files())
    if not (study_dir / STUDY_FILE).is_file():
        raise StorageError(f"{storage.display(STUDY_FILE)}: no study there; give the --storage URI a study ran with")
    for folder in (TUNE_DIR, RERUN_DIR) if experiments else ():
        fetched += storage.get_tree(folder, study_dir / folder)
    return fetched


# What pyarrow opens itself; any other scheme needs fsspec and its package.
ARROW_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs")


def storage_problem(text: str) -> str | None:
    """What is wrong with a storage as written, judged without reaching it (validation runs offline); None if nothing."""
    if not text.strip():
        return "is empty: give a path every node mounts or an object-store URI such as s3://bucket/prefix"
    if not is_uri(text):
        if not Path(text).expanduser().is_absolute():
            return (f"{text!r} is a relative path, which means another folder on every node: give an absolute "
                    "path of a mount every node shares, or an object-store URI (s3://bucket/prefix)")
        return None
    scheme, _, rest = text.partition("://")
    if not rest.strip("/"):
        return f"{text!r} names no bucket or folder: write {scheme}://BUCKET/PREFIX"
    if scheme in ARROW_SCHEMES:
        return None
    try:
        import fsspec

        fsspec.get_filesystem_class(scheme)
    except ImportError:
        return (f"scheme {scheme}:// needs fsspec and its package (pip install fsspec and e.g. adlfs for az://); "
                f"pyarrow alone knows {', '.join(s + '://' for s in ARROW_SCHEMES)}")
    except ValueError:
        return f"unknown scheme {scheme}://; known: {', '.join(s + '://' for s in ARROW_SCHEMES)} and fsspec's"
    return None
