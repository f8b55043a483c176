// Row-wise top-k with a deterministic tie-break: the lowest column index wins (as t2t's _MyTopK,
// docs/algorithms.md §1.9). torch::topk gives no order among ties, so routing uses this instead.
#include <ATen/Parallel.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "kernels/cpu/acc_type.h"
#include "kernels/cpu/kernels.h"

namespace moe::kernels::cpu {

template <typename T>
void topk_rows(const T* v, int64_t rows, int64_t cols, int64_t k, int64_t* idx, T* val) {
  at::parallel_for(0, rows, row_grain(cols * std::max<int64_t>(1, std::min<int64_t>(k, 8))),
                   [&](int64_t begin, int64_t end) {
                     std::vector<int64_t> order;
                     for (int64_t r = begin; r < end; ++r) {
                       const T* row = v + r * cols;
                       int64_t* ri = idx + r * k;
                       T* rv = val + r * k;
                       if (k <= 16) {
                         // Insertion into a sorted list of the k best. Columns arrive in ascending
                         // order and a column only moves ahead of strictly smaller values, so among
                         // equal values the lower index stays first.
                         int64_t count = 0;
                         for (int64_t c = 0; c < cols; ++c) {
                           const T x = row[c];
                           if (count == k && !(x > rv[k - 1])) continue;
                           int64_t pos = count < k ? count : k - 1;
                           while (pos > 0 && x > rv[pos - 1]) {
                             rv[pos] = rv[pos - 1];
                             ri[pos] = ri[pos - 1];
                             --pos;
                           }
                           rv[pos] = x;
                           ri[pos] = c;
                           if (count < k) ++count;
                         }
                       } else {
                         order.resize(cols);
                         std::iota(order.begin(), order.end(), int64_t(0));
                         std::partial_sort(order.begin(), order.begin() + k, order.end(),
                                           [row](int64_t a, int64_t b) {
                                             return row[a] > row[b] || (row[a] == row[b] && a < b);
                                           });
                         for (int64_t j = 0; j < k; ++j) {
                           ri[j] = order[j];
                           rv[j] = row[order[j]];
                         }
                       }
                     }
                   });
}

template void topk_rows<float>(const float*, int64_t, int64_t, int64_t, int64_t*, float*);
template void topk_rows<double>(const double*, int64_t, int64_t, int64_t, int64_t*, double*);

}  // namespace moe::kernels::cpu
