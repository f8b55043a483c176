// MOE_NESTED_ARG: a setter/getter pair on a layer's options that reads and writes a field of one of
// its nested option structs (the router's or the experts'), so that each setting is stored once
// while the short names of the flat options keep working:
//   SparseMoEOptions(512, 16).activation(kSwiGLU)  ==  ...expert_options().activation(kSwiGLU)
#pragma once

#define MOE_NESTED_ARG(T, name, nested, field)        \
 public:                                              \
  inline auto name(const T& value)->decltype(*this) { \
    this->nested.field(value);                        \
    return *this;                                     \
  }                                                   \
  inline const T& name() const noexcept { return this->nested.field(); }

// The short names of the experts' settings (ExpertBankOptions, moe/experts.h) that every routed
// layer's options offer, on its nested member `nested`.
#define MOE_EXPERT_SHORT_NAMES(nested)                       \
  MOE_NESTED_ARG(int64_t, hidden_size, nested, hidden_size)  \
  MOE_NESTED_ARG(Activation, activation, nested, activation) \
  MOE_NESTED_ARG(bool, expert_bias, nested, bias)            \
  MOE_NESTED_ARG(ExpertInit, expert_init, nested, init)      \
  MOE_NESTED_ARG(double, expert_init_std, nested, init_std)  \
  /* See ExpertBankOptions::recompute_hidden. */             \
  MOE_NESTED_ARG(bool, recompute_hidden, nested, recompute_hidden)
