// moe: Mixture-of-Experts layers on LibTorch. The one header users include.
#pragma once

#include "moe/experts.h"
#include "moe/functional.h"
#include "moe/gating.h"
#include "moe/io/checkpoint.h"
#include "moe/io/safetensors.h"
#include "moe/losses.h"
#include "moe/nn/hierarchical_moe.h"
#include "moe/nn/sparse_moe.h"
#include "moe/nn/top_any_moe.h"
#include "moe/plan.h"
#include "moe/router.h"
#include "moe/routers/top_any_router.h"
#include "moe/stats.h"
#include "moe/types.h"
