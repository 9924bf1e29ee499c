"""In-process stand-ins for vLLM (no vLLM or GPU here): ``FakeServers`` for TRL's ``VLLMClient`` (one client per
base_url, the bucketed weight-update API of TRL 1.16) and ``FakeEngine`` for a colocated ``vllm.LLM`` (a tiny
transformers model with vLLM's sleep / wake_up / load_weights semantics)."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ANSWER = "```python\ndef f(x):\n    return x\n```"


class FakeServers:
    """Stands in for ``trl.generation.vllm_client.VLLMClient``: one instance per base_url."""

    def __init__(self, tokenizers: dict[str, AutoTokenizer]) -> None:
        self.tokenizers = tokenizers
        self.clients: dict[str, FakeServers.Client] = {}

    def __call__(self, base_url: str, group_port: int, connection_timeout: float):
        client = self.Client(self.tokenizers[base_url], group_port)
        self.clients[base_url] = client
        return client

    class Client:
        """Records what a ``trl vllm-serve`` would receive. ``update_named_params`` checks the streamed tensors
        against their announced ``(name, dtype, shape)`` as the server's receive buffers would, and ``on_tensor``
        (if set) is called as each tensor arrives. There is no ``update_named_param``: one tensor per request
        fails."""

        def __init__(self, tokenizer, group_port: int) -> None:
            self.tokenizer, self.group_port = tokenizer, group_port
            self.communicator = False
            self.conversations: list = []
            self.weights: dict[str, torch.Tensor] = {}
            self.pushes: list[dict[str, torch.Tensor]] = []
            self.requests: list[list[str]] = []  # the names announced by each /update_weights request
            self.updates = 0  # weight_update() blocks (start/finish_weight_update pairs)
            self.in_update = False
            self.on_tensor = None

        def init_communicator(self, device) -> None:
            self.communicator = True

        def chat(self, messages, temperature, top_p, top_k, max_tokens, logprobs, **kwargs) -> dict:
            assert logprobs == 0 and max_tokens == 16
            self.conversations += messages
            tok = self.tokenizer
            texts = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in messages]
            completion = tok(ANSWER, add_special_tokens=False).input_ids[: max_tokens - 1] + [tok.eos_token_id]
            return {
                "prompt_ids": [tok(t, add_special_tokens=False).input_ids for t in texts],
                "completion_ids": [completion] * len(messages),
                "logprobs": [[[-0.5]] * len(completion)] * len(messages),
            }

        @contextmanager
        def weight_update(self):
            assert not self.in_update
            self.in_update, self.updates = True, self.updates + 1
            try:
                yield
            finally:
                self.in_update = False

        def update_named_params(self, metadata, named_params) -> None:
            assert self.communicator, "weights pushed before init_communicator"
            assert self.in_update, "each request should be inside one weight_update()"
            self.requests.append([name for name, _, _ in metadata])
            received = 0
            for (name, dtype, shape), (sent_name, tensor) in zip(metadata, named_params, strict=True):
                assert isinstance(dtype, str) and not dtype.startswith("torch."), dtype
                assert (sent_name, str(tensor.dtype).removeprefix("torch."), list(tensor.shape)) == (
                    name,
                    dtype,
                    shape,
                )
                assert type(tensor) is torch.Tensor, f"{name}: a {type(tensor).__name__} is not a full tensor"
                self.weights[name] = tensor.detach().clone()
                received += 1
                if self.on_tensor is not None:
                    self.on_tensor(name)
            assert received == len(metadata)

        def reset_prefix_cache(self) -> None:
            self.pushes.append(dict(self.weights))


class FakeEngine:
    """A colocated engine over a tiny transformers model loaded from ``model`` (as vLLM loads the checkpoint).

    Sleep level 2 discards the weights (they become NaN) and the KV cache; ``wake_up(["weights"])`` maps weight
    memory back (still discarded until loaded), ``wake_up(["kv_cache"])`` the cache. ``generate`` needs both awake
    and weights loaded since the last sleep; ``load_weights`` needs the weights awake and refuses unknown names.
    ``events`` (shared, optional) records every call in order; ``loads`` holds a copy of the weights after each
    ``load_weights``."""

    def __init__(self, events: list | None = None, **kwargs) -> None:
        self.kwargs = kwargs
        self.events = events if events is not None else []
        self.model = AutoModelForCausalLM.from_pretrained(kwargs["model"]).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(kwargs["model"])
        self.params = dict(self.model.named_parameters())
        self.awake = {"weights": True, "kv_cache": True}
        self.loaded = True
        self.loads: list[dict[str, torch.Tensor]] = []
        self.name = kwargs["model"]

    def _log(self, event: str) -> None:
        self.events.append((self.name, event))

    def sleep(self, level: int) -> None:
        assert level == 2 and self.kwargs["enable_sleep_mode"], "sleep needs enable_sleep_mode"
        with torch.no_grad():
            for p in self.params.values():
                p.fill_(float("nan"))
        self.awake = {"weights": False, "kv_cache": False}
        self.loaded = False
        self._log("sleep")

    def wake_up(self, tags: list[str]) -> None:
        for tag in tags:
            assert tag in self.awake and not self.awake[tag], tag
            self.awake[tag] = True
            self._log(f"wake_up:{tag}")

    def load_weights(self, weights) -> None:
        assert self.awake["weights"], "load_weights into sleeping weight memory"
        with torch.no_grad():
            for name, tensor in weights:
                self.params[name].copy_(tensor)  # KeyError on a name vLLM would not know
        self.loaded = True
        self.loads.append({k: v.detach().clone() for k, v in self.params.items()})
        self._log("load_weights")

    def reset_prefix_cache(self) -> None:
        pass

    @torch.no_grad()
    def generate(self, prompt_ids, sampling):
        assert all(self.awake.values()) and self.loaded, "generate on a sleeping engine or discarded weights"
        self._log("generate")
        out = []
        for ids in prompt_ids:
            seq = self.model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=sampling.max_new_tokens,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
            )
            completion = seq.sequences[0, len(ids) :].tolist()
            logps = [torch.log_softmax(lg[0].float(), -1)[t].item() for lg, t in zip(seq.logits, completion)]
            out.append((completion, logps))
        return out
