// moe::nn::HierarchicalMoE: a named constructor of RoutedMoE with the two-level gate of Shazeer et
// al. 2017, Appendix B (include/moe/nn/hierarchical_moe.h, docs/algorithms.md §1.7).
#include "moe/nn/hierarchical_moe.h"

#include <ostream>

namespace moe::nn {
namespace {

constexpr const char* kWho = "HierarchicalMoE";

RoutedMoEOptions routed_options(const HierarchicalMoEOptions& o) {
  const auto ro = o.router_options();
  return RoutedMoEOptions(
             o.d_model(), [ro] { return HierarchicalRouter(ro).ptr(); }, o.expert_options())
      .name(kWho);
}

}  // namespace

HierarchicalMoEImpl::HierarchicalMoEImpl(HierarchicalMoEOptions options)
    : RoutedMoEImpl(routed_options(options)), layer_options_(std::move(options)) {
  const auto& r = router_as<HierarchicalRouterImpl>();
  primary_router = r.primary_router;
  secondary_router = r.secondary_router;
}

std::shared_ptr<RoutedMoEImpl> HierarchicalMoEImpl::make_copy() const {
  return std::make_shared<HierarchicalMoEImpl>(layer_options_);
}

void HierarchicalMoEImpl::pretty_print(std::ostream& stream) const {
  const auto& o = layer_options_;
  stream << "moe::nn::HierarchicalMoE(d_model=" << o.d_model() << ", groups=" << o.groups()
         << ", experts_per_group=" << o.experts_per_group() << ", hidden_size=" << o.hidden_size()
         << ", top_k=(" << o.primary_top_k() << ", " << o.secondary_top_k()
         << "), activation=" << to_string(o.activation()) << ")";
}

}  // namespace moe::nn
