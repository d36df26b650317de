"""Direct, loop-over-pairs implementations of the formulas of docs/MODELS.md, independent of the package code.

Slow on purpose: one (caption, image) pair at a time, dense matrices where the released
code used them, so that the vectorised heads can be checked against the text of docs/MODELS.md.
"""

import torch
import torch.nn.functional as F


def l2n(x, dim=-1):
    return x / (torch.sqrt((x ** 2).sum(dim, keepdim=True)) + 1e-8)


# ------------------------------------------------------------------ ESL levels
def heuristic_levels(x, kernels, chain_normalized=True):
    """kernels: per level a (4, 1, k) Conv1d weight; each level is the l2norm of the sum of
    the four stride-k convolutions of the previous level."""
    outputs, current = [x], x
    for weight in kernels:
        flat = current.reshape(-1, 1, current.shape[-1])
        raw = sum(F.conv1d(flat, weight[c:c + 1], stride=weight.shape[-1]) for c in range(weight.shape[0]))
        raw = raw.reshape(*current.shape[:-1], -1)
        outputs.append(l2n(raw))
        current = l2n(raw) if chain_normalized else raw
    return torch.cat(outputs, -1)


def top2_mask(matrix):
    """Rows L2-normalised, keeping the entries >= each row's second-largest value."""
    rows = l2n(matrix)
    out = torch.zeros_like(rows)
    for r in range(rows.shape[0]):
        values = sorted(rows[r].tolist(), reverse=True)
        second = values[min(2, len(values)) - 1]
        for c in range(rows.shape[1]):
            if rows[r, c] >= second:
                out[r, c] = rows[r, c]
    return out


def adaptive_levels(x, matrices, chain_normalized=True):
    outputs, current = [x], x
    for matrix in matrices:
        raw = current @ top2_mask(matrix).t()
        outputs.append(l2n(raw))
        current = l2n(raw) if chain_normalized else raw
    return torch.cat(outputs, -1)


def level_coefficients(w, sigma, lam, sigmoid):
    a = w.abs()
    share = torch.sigmoid(sigma) if sigmoid else sigma
    thr = (a.max() - a.min()) * share + a.min()
    return torch.exp((a - thr) * torch.exp(lam)) * w


def split_levels(x, widths):
    out, start = [], 0
    for width in widths:
        out.append(x[..., start:start + width])
        start += width
    return out


# ------------------------------------------------------------------ X-Dim
def xdim_dependency(E, s, t):
    W = torch.sigmoid(E)
    thr = W.mean(1) + s * W.std(1)
    M = torch.tanh(torch.exp(torch.exp(t) * (W - thr[:, None])))
    return l2n(M * W, dim=1)


def xdim_scores(E, s, t, tau, images, captions):
    """images: (N, R, d); captions: list of (L_c, d). Dense diag(g) as the released code."""
    D = xdim_dependency(E, s, t)
    diagonal = torch.diag(D.sum(0))
    sims = torch.zeros(images.shape[0], len(captions), dtype=images.dtype)
    for c, words in enumerate(captions):
        for i in range(images.shape[0]):
            v = images[i]
            A = torch.tanh(words @ diagonal @ v.t())
            A = F.leaky_relu(A, 0.1)
            A = A / (torch.sqrt((A ** 2).sum(0, keepdim=True)) + 1e-8)
            A = torch.softmax(torch.exp(tau) * A, dim=1)
            context = l2n(A @ v)
            z = l2n((context * words) @ D.t())
            sims[i, c] = z.sum(1).mean()
    return sims


# ------------------------------------------------------------------ ESL-region
def weighting(M, tau):
    """softmax_rows(exp(tau) * colnorm(leaky_relu(tanh(M), 0.1)))."""
    M = F.leaky_relu(torch.tanh(M), 0.1)
    M = M / (torch.sqrt((M ** 2).sum(0, keepdim=True)) + 1e-8)
    return torch.softmax(torch.exp(tau) * M, dim=1)


def esl_region_scores(image_levels, caption_levels, widths, coefficients, matrices, tau):
    """image_levels: (N, R, W); caption_levels: list of (L_c, W); matrices: the LN(B_l)."""
    sims = torch.zeros(image_levels.shape[0], len(caption_levels), dtype=image_levels.dtype)
    for c, y in enumerate(caption_levels):
        ys = split_levels(y, widths)
        for i in range(image_levels.shape[0]):
            xs = split_levels(image_levels[i], widths)
            A = sum(ys[l] @ (coefficients[l] * matrices[l]) @ xs[l].t() for l in range(len(widths)))
            t2i = (A * weighting(A, tau)).sum(1).mean()
            i2t = (A.t() * weighting(A.t(), tau)).sum(1).mean()
            sims[i, c] = t2i + i2t
    return sims


# ------------------------------------------------------------------ ESL-CLIP
def esl_clip_scores(image_levels, caption_levels, widths, coefficients, matrices):
    sims = torch.zeros(image_levels.shape[0], caption_levels.shape[0], dtype=image_levels.dtype)
    for i in range(image_levels.shape[0]):
        xs = split_levels(image_levels[i], widths)
        for c in range(caption_levels.shape[0]):
            ys = split_levels(caption_levels[c], widths)
            sims[i, c] = sum(xs[l] @ (coefficients[l] * matrices[l]) @ ys[l] for l in range(len(widths))) / len(widths)
    return sims


# ------------------------------------------------------------------ encoders (released layouts)
def region_encoder(state, regions):
    """Released EncoderImageAggr ('basic') with BatchNorm in eval mode, from its state dict."""
    def linear(x, prefix):
        return x @ state[prefix + ".weight"].t() + state[prefix + ".bias"]
    hidden = linear(regions, "fc")
    bn = "mlp.bns.0."
    mlp = linear(regions, "mlp.layers.0")
    mlp = (mlp - state[bn + "running_mean"]) / torch.sqrt(state[bn + "running_var"] + 1e-5) * state[bn + "weight"] \
        + state[bn + "bias"]
    mlp = linear(torch.relu(mlp), "mlp.layers.1")
    return l2n(hidden + mlp)


def _openai_block(x, state, prefix, heads, mask=None):
    def ln(v, name):
        return F.layer_norm(v, v.shape[-1:], state[prefix + name + ".weight"], state[prefix + name + ".bias"])
    y = ln(x, "ln_1").transpose(0, 1)                       # (L, N, W)
    attended, _ = F.multi_head_attention_forward(
        y, y, y, y.shape[-1], heads, state[prefix + "attn.in_proj_weight"], state[prefix + "attn.in_proj_bias"],
        None, None, False, 0.0, state[prefix + "attn.out_proj.weight"], state[prefix + "attn.out_proj.bias"],
        training=False, need_weights=False, attn_mask=mask)
    x = x + attended.transpose(0, 1)
    h = ln(x, "ln_2") @ state[prefix + "mlp.c_fc.weight"].t() + state[prefix + "mlp.c_fc.bias"]
    h = h * torch.sigmoid(1.702 * h)                         # QuickGELU
    return x + h @ state[prefix + "mlp.c_proj.weight"].t() + state[prefix + "mlp.c_proj.bias"]


def openai_clip_image(state, pixels, layers):
    """OpenAI CLIP VisionTransformer.forward from an OpenAI-layout state dict (keys without 'clip.')."""
    x = F.conv2d(pixels, state["visual.conv1.weight"], stride=state["visual.conv1.weight"].shape[-1])
    x = x.flatten(2).transpose(1, 2)
    cls = state["visual.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], 1) + state["visual.positional_embedding"]
    x = F.layer_norm(x, x.shape[-1:], state["visual.ln_pre.weight"], state["visual.ln_pre.bias"])
    heads = x.shape[-1] // 64
    for layer in range(layers):
        x = _openai_block(x, state, f"visual.transformer.resblocks.{layer}.", heads)
    x = F.layer_norm(x[:, 0], x.shape[-1:], state["visual.ln_post.weight"], state["visual.ln_post.bias"])
    return x @ state["visual.proj"]


def openai_clip_text(state, ids, layers):
    """OpenAI CLIP encode_text: causal transformer, features of the argmax (EOT) token."""
    x = state["token_embedding.weight"][ids] + state["positional_embedding"][: ids.shape[1]]
    length = ids.shape[1]
    mask = torch.full((length, length), float("-inf")).triu(1)
    heads = x.shape[-1] // 64
    for layer in range(layers):
        x = _openai_block(x, state, f"transformer.resblocks.{layer}.", heads, mask)
    x = F.layer_norm(x, x.shape[-1:], state["ln_final.weight"], state["ln_final.bias"])
    return x[torch.arange(x.shape[0]), ids.argmax(-1)] @ state["text_projection"]
