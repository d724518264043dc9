"""What every model answers besides loading: its input embeddings and its parameter count.

:class:`EmbeddingsMixin` is a base of :class:`~clipbeam.model.loading.PreTrainedModel`; the
methods have transformers' names and results (``get_input_embeddings``, ``num_parameters``...).
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

__all__ = ["EmbeddingsMixin"]


class EmbeddingsMixin(nn.Module):
    """``get_input_embeddings`` / ``set_input_embeddings`` / ``get_output_embeddings`` and
    ``num_parameters``, for the classes that set the two attributes below."""

    # Dotted name of the input embedding module (get_input_embeddings), or the attribute of a
    # wrapped tower that owns it (embeddings_owner, for the WithProjection models).
    input_embeddings_name: ClassVar[str] = ""
    embeddings_owner: ClassVar[str] = ""

    def get_input_embeddings(self) -> nn.Module:
        """The module that embeds the inputs (token or patch embedding), as in transformers.

        Raises:
            NotImplementedError: the model has no single input embedding (a two-tower model).
        """
        owner = getattr(self, self.embeddings_owner, None) if self.embeddings_owner else self
        if owner is not self and isinstance(owner, EmbeddingsMixin):
            return owner.get_input_embeddings()
        if not self.input_embeddings_name:
            raise NotImplementedError(
                f"{type(self).__name__} has two input embeddings (text and image): call "
                "get_input_embeddings() on its text_model or vision_model"
            )
        return self.get_submodule(self.input_embeddings_name)

    def set_input_embeddings(self, value: nn.Module) -> None:
        """Replaces the module :meth:`get_input_embeddings` returns."""
        owner = getattr(self, self.embeddings_owner, None) if self.embeddings_owner else self
        if owner is not self and isinstance(owner, EmbeddingsMixin):
            owner.set_input_embeddings(value)
            return
        self.get_input_embeddings()  # raises where there is no single input embedding
        parent_name, _, name = self.input_embeddings_name.rpartition(".")
        setattr(self.get_submodule(parent_name), name, value)

    def get_output_embeddings(self) -> nn.Module | None:
        """None: no model here has a language-model head tied to the embeddings."""
        return None

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """The number of parameters (as transformers counts them).

        Args:
            only_trainable: count only those with ``requires_grad``.
            exclude_embeddings: leave out the weights of ``nn.Embedding`` modules.
        """
        skipped = set()
        if exclude_embeddings:
            skipped = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        return sum(
            p.numel()
            for p in self.parameters()
            if id(p) not in skipped and (p.requires_grad or not only_trainable)
        )
