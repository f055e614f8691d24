"""Closed-form errors of residual binarization, for BiLLM's per-block mask searches.

The searches try many masks per block (up to 49 salient-column counts and 81 split points), so
binarizing every candidate is slow on a CPU. Binarizing n values v at order 1, with
mu = mean v and alpha = mean |v - mu|, has squared error

    E1 = sum (|v - mu| - alpha)^2 = sum v^2 - n mu^2 - n alpha^2,

and order 2 binarizes the residual r = s (|v - mu| - alpha), with s = sign(v - mu) and
sign(0) = +1, whose mean is mu2 = -alpha (n+ - n-) / n and whose deviations are
|r - mu2| = |v - (mu + alpha + mu2)| where s = +1 and |v - (mu - alpha + mu2)| where s = -1.
So E2 = E1 - n mu2^2 - n alpha2^2. Every sum of |v - c| over a set reduces to prefix sums
over the row's values sorted once, plus a binary search for c. All sums run in float64.

The salient-column search binarizes whole sets: the top-k columns of each row (a membership
mask per candidate k) and the rest, so it queries sums below a value (MemberSet,
ComplementSet). The split search binarizes groups that are one or two index ranges of the
sorted non-salient values, so it queries sums over ranges [start, end) (`totals`,
`absolute_deviation`).
"""

from __future__ import annotations

import torch

# Candidates are evaluated in chunks whose prefix tensors hold about this many elements (32 MiB
# each in float64), which bounds the search's temporary memory whatever the block shape.
CHUNK_ELEMENTS = 1 << 22

# A range bound is an index tensor, or a Python int (0 or the row length) shared by every query.
Bound = torch.Tensor | int
Ranges = list[tuple[Bound, Bound]]


def clip_index(index: torch.Tensor, start: Bound, end: Bound) -> torch.Tensor:
    """Clamp `index` into [start, end]."""
    low = index.clamp_min(start) if isinstance(start, int) else torch.maximum(index, start)
    return low.clamp_max(end) if isinstance(end, int) else torch.minimum(low, end)


class SortedPrefix:
    """Inclusive prefix counts, sums and sums of squares over each row's sorted values, members only.

    `sorted_values` is (rows, m), sorted ascending per row. `membership` is None (every entry is
    a member) or a boolean (rows, candidates, m). Query indices j count entries: a query at j
    covers the sorted entries 0 .. j-1. They have shape (rows, q) without membership and
    (rows, candidates, 1) with it. Queries return the prefixes stacked on a leading dimension:
    count, sum and sum of squares.
    """

    def __init__(self, sorted_values: torch.Tensor, membership: torch.Tensor | None = None):
        self.sorted = sorted_values
        self.length = sorted_values.shape[-1]
        if membership is None:
            weights = torch.ones_like(sorted_values)
            member_values = sorted_values.clone()
            squares = sorted_values * sorted_values
        else:
            values = sorted_values.unsqueeze(1)
            weights = membership.to(sorted_values.dtype)
            member_values = weights * values
            squares = member_values * values
        # Summed in place, so a chunk of candidates keeps three tensors and no temporaries.
        self.prefixes = [part.cumsum_(dim=-1) for part in (weights, member_values, squares)]

    def position(self, centers: torch.Tensor) -> torch.Tensor:
        """Return, per row, the number of sorted values below each center."""
        rows = self.sorted.shape[0]
        flat = centers.reshape(rows, -1).contiguous()
        return torch.searchsorted(self.sorted, flat).reshape(centers.shape)

    def at(self, index: Bound, kinds: int = 3) -> torch.Tensor:
        """Return the first `kinds` prefixes (count, sum, sum of squares) over the first `index` sorted entries."""
        prefixes = self.prefixes[:kinds]
        if isinstance(index, int):
            if index == 0:
                shape = (kinds,) + (1,) * self.prefixes[0].dim()
                return torch.zeros(shape, dtype=self.sorted.dtype, device=self.sorted.device)
            if index != self.length:
                raise ValueError(f"Integer bounds must be 0 or the row length {self.length}, got {index}.")
            return torch.stack([prefix[..., -1:] for prefix in prefixes])
        last = (index - 1).clamp_min(0)
        values = torch.stack([torch.gather(prefix, -1, last) for prefix in prefixes])
        return torch.where(index > 0, values, 0.0)

    def between(self, start: Bound, end: Bound) -> torch.Tensor:
        return self.at(end) - self.at(start)


class MemberSet:
    """The members of a SortedPrefix with membership, one set per row and candidate."""

    def __init__(self, members: SortedPrefix):
        self.members = members

    def totals(self) -> torch.Tensor:
        """Return (count, sum, sum of squares) of the set, stacked, each (rows, candidates, 1)."""
        return self.members.at(self.members.length)

    def below(self, centers: torch.Tensor) -> torch.Tensor:
        """Return (count, sum) of the set's values below `centers` (rows, candidates, 1), stacked."""
        return self.members.at(self.members.position(centers), kinds=2)


class ComplementSet(MemberSet):
    """The entries of each row that are not members of `members`, computed by difference."""

    def __init__(self, everything: SortedPrefix, members: SortedPrefix):
        super().__init__(members)
        self.everything = everything

    def totals(self) -> torch.Tensor:
        everything = self.everything.at(self.everything.length).unsqueeze(-1)
        return everything - super().totals()

    def below(self, centers: torch.Tensor) -> torch.Tensor:
        index = self.members.position(centers)
        rows = index.shape[0]
        everything = self.everything.at(index.reshape(rows, -1), kinds=2).reshape(2, *index.shape)
        return everything - self.members.at(index, kinds=2)


def totals(prefix: SortedPrefix, ranges: Ranges) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (count, sum, sum of squares) of the members in `ranges`."""
    count, total, square = sum(prefix.between(start, end) for start, end in ranges)
    return count, total, square


def absolute_deviation(prefix: SortedPrefix, ranges: Ranges, center: torch.Tensor) -> torch.Tensor:
    """Return the sum of |v - center| over the members in `ranges`."""
    cut = prefix.position(center)
    result = torch.zeros_like(center)
    for start, end in ranges:
        middle = clip_index(cut, start, end)
        below_count, below_sum, _ = prefix.between(start, middle)
        above_count, above_sum, _ = prefix.between(middle, end)
        result = result + (above_sum - center * above_count) + (center * below_count - below_sum)
    return result


def order1_error(prefix: SortedPrefix, ranges: Ranges) -> tuple[torch.Tensor, ...]:
    """Return (mean, scale, squared error, count) of binarizing the set at order 1."""
    count, total, square = totals(prefix, ranges)
    safe_count = count.clamp_min(1)
    mean = total / safe_count
    scale = absolute_deviation(prefix, ranges, mean) / safe_count
    error = square - count * mean**2 - count * scale**2
    return mean, scale, error, count


def order2_set_error(values: MemberSet) -> torch.Tensor:
    """Return the squared error of binarizing each whole set at order 2.

    Needs only the set's totals and its counts and sums below three values: the mean mu, the
    upper center mu + alpha + mu2 (>= mu) and the lower center mu - alpha + mu2 (<= mu).
    """
    count, total, square = values.totals()
    safe_count = count.clamp_min(1)
    mean = total / safe_count
    below_count, below_sum = values.below(mean)
    scale = (total - 2 * below_sum - mean * (count - 2 * below_count)) / safe_count
    error = square - count * mean**2 - count * scale**2

    # n+ - n- = count - 2 * below_count, because values equal to the mean take sign +1.
    residual_mean = -scale * (count - 2 * below_count) / safe_count
    upper = mean + scale + residual_mean
    lower = mean - scale + residual_mean
    upper_count, upper_sum = values.below(upper)
    lower_count, lower_sum = values.below(lower)
    positive = (
        upper * (upper_count - below_count) - (upper_sum - below_sum) + (total - upper_sum) - upper * (count - upper_count)
    )
    negative = lower * lower_count - lower_sum + (below_sum - lower_sum) - lower * (below_count - lower_count)
    residual_scale = (positive + negative) / safe_count
    return error - count * residual_mean**2 - count * residual_scale**2


def rank_columns(saliency: torch.Tensor, limit: int) -> torch.Tensor:
    """Return the `limit` columns with the largest sum of |saliency|, largest first."""
    return torch.topk(saliency.abs().sum(dim=0), limit).indices


def salient_column_errors(saliency: torch.Tensor, ranked: torch.Tensor) -> torch.Tensor:
    """Return the squared error of each candidate k = 1..len(ranked) of the salient-column search.

    Candidate k binarizes the top-k ranked columns and the other columns, both at order 2.
    """
    rows, columns = saliency.shape
    values = saliency.double()
    sorted_values, order = values.sort(dim=1)
    rank = torch.full((columns,), columns, dtype=torch.long, device=saliency.device)
    rank[ranked] = torch.arange(ranked.numel(), device=saliency.device)
    sorted_rank = rank[order]  # (rows, columns): the column rank of each sorted entry

    everything = SortedPrefix(sorted_values)
    chunk = max(1, CHUNK_ELEMENTS // (rows * columns))
    counts = torch.arange(1, ranked.numel() + 1, device=saliency.device)
    errors = []
    for candidate_counts in counts.split(chunk):
        members = SortedPrefix(sorted_values, sorted_rank.unsqueeze(1) < candidate_counts.view(1, -1, 1))
        salient_error = order2_set_error(MemberSet(members))
        other_error = order2_set_error(ComplementSet(everything, members))
        errors.append((salient_error + other_error).sum(dim=(0, 2)))
    return torch.cat(errors)


def split_errors(saliency: torch.Tensor, column_mask: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Return, per threshold p, the squared error of binarizing the non-salient entries at order 1
    in two groups, |s| < p and |s| >= p. The salient columns' error is the same for every p and is
    left out.
    """
    values = saliency[:, ~column_mask].double()
    rows, members = values.shape
    if members == 0:
        return torch.zeros(thresholds.numel(), dtype=torch.float64, device=saliency.device)
    sorted_values, _ = values.sort(dim=1)
    prefix = SortedPrefix(sorted_values)

    limits = thresholds.double().view(1, -1).expand(rows, -1)
    low_start = torch.searchsorted(sorted_values, -limits.contiguous(), right=True)  # first v > -p
    # First v >= p. At p = 0 that index precedes low_start, and the low group is empty.
    low_end = torch.maximum(torch.searchsorted(sorted_values, limits.contiguous()), low_start)
    low = order1_error(prefix, [(low_start, low_end)])[2]
    high = order1_error(prefix, [(0, low_start), (low_end, members)])[2]
    return (low + high).sum(dim=0)
