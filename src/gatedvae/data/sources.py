"""Where each benchmark data set comes from: the official URLs, checksums, licences and the
default place on disk (``<data_dir>/<name>/``) that ``gatedvae data download`` fills and the
loaders read when ``data.path`` is empty.

Checksums: MD5 of the whole file. The publishers of these data sets print none (3D Shapes, MPI3D,
SmallNORB, Cars3D, CelebA's Drive files, MNIST); the values here are those that the torchvision
(MNIST, CelebA) and disent (3D Shapes, MPI3D, SmallNORB, Cars3D) projects recorded from the
official files and check their downloads against. Where none is known, a download is verified by
its size (the server's ``Content-Length``) and its format (the file's magic bytes). MNIST's own
page often refuses scripted downloads; its files then come from the mirror torchvision uses
(checked against the same MD5s).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from .registry import data_dir

__all__ = ["Remote", "Source", "SOURCES", "source", "default_path", "require_file"]


@dataclass(frozen=True)
class Remote:
    """One file to fetch: its URL, the name it is saved under, and what verifies it.

    ``kind``: the format its first bytes must show (``h5``, ``zip``, ``gzip``, ``jpeg``, ``text``,
    or ``any``). ``md5``: the whole file's MD5, when known. ``size``: its size in bytes, when known.
    ``mirrors``: other URLs of the same file, tried in order when ``url`` cannot be reached.
    """

    url: str
    filename: str
    kind: str = "any"
    md5: str | None = None
    size: int | None = None
    mirrors: tuple[str, ...] = ()


@dataclass(frozen=True)
class Source:
    """A data set's files and terms. ``accept``: the licence must be accepted explicitly
    (``--accept-licence``) before anything is fetched. ``extract``: archives to unpack after the
    download: ``(archive file name, member prefix, folder)`` unpacks the members under the prefix
    into the folder (the prefix stripped)."""

    name: str
    title: str
    homepage: str
    licence: str
    files: tuple[Remote, ...]
    size: str = ""
    accept: bool = False
    extract: tuple[tuple[str, str, str], ...] = field(default=())
    folder: str = ""

    @property
    def dir_name(self) -> str:
        """The folder under ``data_dir`` it is downloaded into (MPI3D's three share ``mpi3d``)."""
        return self.folder or self.name


_NORB = "https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/"
_NORB_FILES = tuple(
    Remote(_NORB + f"smallnorb-{half}-{part}.mat.gz", f"smallnorb-{half}-{part}.mat.gz", "gzip", md5)
    for half, part, md5 in (
        ("5x46789x9x18x6x2x96x96-training", "dat", "66054832f9accfe74a0f4c36a75bc0a2"),
        ("5x46789x9x18x6x2x96x96-training", "cat", "23c8b86101fbf0904a000b43d3ed2fd9"),
        ("5x46789x9x18x6x2x96x96-training", "info", "51dee1210a742582ff607dfd94e332e3"),
        ("5x01235x9x18x6x2x96x96-testing", "dat", "e4ad715691ed5a3a5f138751a4ceb071"),
        ("5x01235x9x18x6x2x96x96-testing", "cat", "5aa791cd7e6016cf957ce9bdb93b8603"),
        ("5x01235x9x18x6x2x96x96-testing", "info", "a9454f3864d7fd4bb3ea7fc3eb84924e"),
    )
)
_MPI3D = "https://storage.googleapis.com/disentanglement_dataset/Final_Dataset/"
_MNIST = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_DRIVE = "https://drive.usercontent.google.com/download?export=download&confirm=t&id="

SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source(
            "shapes3d",
            "3D Shapes (Burgess and Kim, DeepMind 2018)",
            "https://github.com/google-deepmind/3d-shapes",
            "Apache License 2.0",
            (
                Remote(
                    "https://storage.googleapis.com/3d-shapes/3dshapes.h5",
                    "3dshapes.h5",
                    "h5",
                    "099a2078d58cec4daad0702c55d06868",
                ),
            ),
            "5.9 GB of pixels (480,000 RGB 64x64 images) in one HDF5 file",
        ),
        *(
            Source(
                f"mpi3d_{variant}" if variant != "toy" else "mpi3d",
                f"MPI3D-{variant} (Gondal et al., NeurIPS 2019)",
                "https://github.com/rr-learning/disentanglement_dataset",
                "Creative Commons Attribution 4.0 International (CC BY 4.0)",
                (Remote(_MPI3D + f"mpi3d_{variant}.npz", f"mpi3d_{variant}.npz", "zip", md5),),
                "12.7 GB of pixels (1,036,800 RGB 64x64 images)",
                folder="mpi3d",
            )
            for variant, md5 in (
                ("toy", "55889cb7c7dfc655d6e0277beee88868"),
                ("realistic", "59a6225b88b635365f70c91b3e52f70f"),
                ("real", "0f33f609918fb5c97996692f91129802"),
            )
        ),
        Source(
            "smallnorb",
            "SmallNORB (LeCun, Huang and Bottou, CVPR 2004)",
            "https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/",
            "no licence stated by the publisher; free for research use as published on its page",
            _NORB_FILES,
            "2 x 24,300 stereo pairs of 96x96 grey images: 0.9 GB of pixels in 6 gzipped files",
        ),
        Source(
            "cars3d",
            "Cars3D (Reed et al., NeurIPS 2015, 'Deep Visual Analogy-Making')",
            "https://www.scottreed.info/",
            "no licence stated by the publisher (renderings of Fidler et al.'s 3D car models); research use",
            (
                Remote(
                    "http://www.scottreed.info/files/nips2015-analogy-data.tar.gz",
                    "nips2015-analogy-data.tar.gz",
                    "gzip",
                    "4e866a7919c1beedf53964e6f7a23686",
                ),
            ),
            "183 x 96 RGB 128x128 renderings (0.86 GB of pixels) in a tar.gz with the paper's other data",
            extract=(("nips2015-analogy-data.tar.gz", "data/cars/", "cars"),),
        ),
        Source(
            "mnist",
            "MNIST (LeCun, Cortes and Burges)",
            "http://yann.lecun.com/exdb/mnist/",
            "Creative Commons Attribution-Share Alike 3.0 (as redistributed; the original page states none)",
            tuple(
                Remote("http://yann.lecun.com/exdb/mnist/" + f, f, "gzip", md5, mirrors=(_MNIST + f,))
                for f, md5 in (
                    ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
                    ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
                    ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
                    ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
                )
            ),
            "11 MB gzipped (4 IDX files)",
        ),
        Source(
            "celeba",
            "CelebA, aligned and cropped (Liu, Luo, Wang and Tang, ICCV 2015)",
            "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html",
            "non-commercial research and educational use only, under the CelebA agreement "
            "(https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html): no redistribution, no commercial use",
            (
                Remote(
                    _DRIVE + "0B7EVK8r0v71pZjFTYXZWM3FlRnM",
                    "img_align_celeba.zip",
                    "zip",
                    "00d2c5bc6d35e252742224ab0c1e8fcb",
                ),
                Remote(
                    _DRIVE + "0B7EVK8r0v71pblRyaVFSWGxPY0U",
                    "list_attr_celeba.txt",
                    "text",
                    "75e246fa4810816ffd6ee81facbd244c",
                ),
                Remote(
                    _DRIVE + "0B7EVK8r0v71pY0NSMzRuSXJEVkk",
                    "list_eval_partition.txt",
                    "text",
                    "d32c9cbf5e040fd4025c592c306e6668",
                ),
            ),
            "1.4 GB (202,599 JPEG images, 178x218)",
            accept=True,
            extract=(("img_align_celeba.zip", "img_align_celeba/", "img_align_celeba"),),
        ),
        Source(
            "scream",
            "The Scream (Edvard Munch, 1893), the texture of scream-dSprites",
            "https://commons.wikimedia.org/wiki/File:The_Scream.jpg",
            "public domain",
            (Remote("https://upload.wikimedia.org/wikipedia/commons/f/f4/The_Scream.jpg", "The_Scream.jpg", "jpeg"),),
            "one JPEG",
        ),
        Source(
            "dsprites",
            "dSprites (Matthey, Higgins, Hassabis and Lerchner, DeepMind 2017)",
            "https://github.com/google-deepmind/dsprites-dataset",
            "Apache License 2.0",
            (
                Remote(
                    "https://github.com/google-deepmind/dsprites-dataset/raw/master/dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz",
                    "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz",
                    "zip",
                ),
            ),
            "26 MB (npz)",
        ),
    )
}


def source(name: str) -> Source:
    """The source of a downloadable data set; a one-line DataError naming the known ones otherwise."""
    if name not in SOURCES:
        from ..io import closest

        near = closest(name, SOURCES)
        hint = f"; did you mean '{near}'?" if near else ""
        raise DataError(f"no download is known for '{name}'{hint} downloadable: {', '.join(SOURCES)}")
    return SOURCES[name]


def default_path(name: str, data_dir_setting: str = "") -> Path:
    """Where ``gatedvae data download NAME`` puts a data set: ``<data_dir>/<folder>/`` (the name,
    except MPI3D's three variants, which share ``mpi3d/``)."""
    return data_dir(data_dir_setting) / (SOURCES[name].dir_name if name in SOURCES else name)


def require_file(path: Path, what: str, download_name: str) -> Path:
    """``path`` when it exists; otherwise a one-line DataError saying how to get it."""
    if path.exists():
        return path
    src = SOURCES.get(download_name)
    urls = " and ".join(r.url for r in src.files[:1]) if src else ""
    more = f" (or fetch {urls} by hand" if urls else " (or put it there by hand"
    raise DataError(
        f"{what} {path} does not exist; run `gatedvae data download {download_name}`{more} and set data.path to it)"
    )
