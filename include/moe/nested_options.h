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
