"""`moat support` settings: one dataclass for build (knowledge base → served models + index + policy), eval and
the chat service."""
from __future__ import annotations

import dataclasses

from moatkit.data.core.errors import ConfigError


@dataclasses.dataclass
class RouterConfig:
    """The department classifier: `moat finetune` on the knowledge base, served as its own model."""
    enabled: bool = True
    name: str = "support-router"
    model: str = "minilm-l6"
    max_length: int = 128  # questions are short; answers (training text too) are cut here
    epochs: int = 6
    learning_rate: float = 1e-4
    batch_size: int = 16
    answers_as_examples: bool = True  # the KB's answers are training text of their department too


@dataclasses.dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    model_server: str | None = None  # host:port of a running server's gRPC; default: start moat-model-server
    log_dir: str = "logs/support"  # every turn, feedback and hand-off as JSON lines
    max_message_chars: int = 2000
    max_request_bytes: int = 64 * 1024
    turns_per_second: float = 2.0  # per session: a token bucket ...
    burst: int = 8  # ... of this size; beyond it 429
    history_turns: int = 20  # turns kept per session
    max_sessions: int = 10_000  # the least recently used session goes first
    session_ttl_s: float = 3600.0
    timeout_s: float = 5.0  # per gRPC call to the model server
    batching: bool = True  # the started model server batches concurrent requests (--enable_batching)


@dataclasses.dataclass
class SupportConfig:
    kb: list[str] = dataclasses.field(default_factory=lambda: ["catalog:python-faq"])  # files, dirs, catalog:NAME
    strict_conflicts: bool = False  # a duplicate question with another answer: reported (False) or an error
    out: str = "artifacts/support"  # kb.jsonl, index.npz, policy.json, report.json, router data + run
    repo: str = "artifacts/models"  # the encoder and router versions go to <repo>/<name>/<version>
    encoder_model: str = "minilm-l6"
    encoder_name: str = "support-encoder"
    encoder_max_length: int = 256
    router: RouterConfig = dataclasses.field(default_factory=RouterConfig)
    # the seeded question split: train questions may be index keys and router examples, dev fits the policy,
    # test questions are only ever queries
    dev_share: float = 0.2
    test_share: float = 0.2
    seed: int = 13
    hybrid_weight: float | None = None  # BM25 share in the hybrid score; None: fitted on the dev questions
    out_of_scope: list[str] = dataclasses.field(default_factory=lambda: ["trec", "movie-dialog"])  # catalog names
    out_of_scope_dev: int = 200  # texts per source for fitting the hand-off threshold ...
    out_of_scope_test: int = 500  # ... and, disjoint, for the evaluation
    in_scope_recall: float = 0.95  # hand-off threshold: this share of dev in-scope questions is still answered
    answer_precision: float = 0.85  # clarify margin: direct answers on held-out questions are right this often ...
    max_clarify_share: float = 0.3  # ... unless that would ask more than this share of them to clarify
    top_k: int = 3  # candidates shown when the assistant asks to clarify
    serve: ServeConfig = dataclasses.field(default_factory=ServeConfig)

    def validate(self):
        if not self.kb:
            raise ConfigError("config key 'kb' is empty", fix="e.g. --set 'kb=[faq.md]' or catalog:python-faq")
        if not (0 < self.dev_share < 1 and 0 < self.test_share < 1 and self.dev_share + self.test_share < 1):
            raise ConfigError(f"dev_share {self.dev_share} + test_share {self.test_share} must leave a train share",
                              fix="e.g. dev_share=0.2, test_share=0.2")
        for name in ("in_scope_recall", "answer_precision", "max_clarify_share"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"config key '{name}' must be in (0, 1], got {getattr(self, name)}")
        if self.top_k < 2:
            raise ConfigError(f"config key 'top_k' must be >= 2, got {self.top_k}", fix="clarify shows 2 or more")
        if not 8 <= self.encoder_max_length <= 512:
            raise ConfigError(f"config key 'encoder_max_length' is {self.encoder_max_length}", fix="use 8..512")
        if self.serve.turns_per_second <= 0 or self.serve.burst < 1:
            raise ConfigError("serve.turns_per_second must be > 0 and serve.burst >= 1")
