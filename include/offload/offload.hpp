#pragma once
/// \file
/// Umbrella header of offload: every public concept. Test doubles (mock devices, sized components,
/// simulation) are in offload/testing/ and included separately.

#include <offload/block_stream.hpp>
#include <offload/budget_planner.hpp>
#include <offload/compat.hpp>
#include <offload/component.hpp>
#include <offload/concepts.hpp>
#include <offload/cost_model.hpp>
#include <offload/device.hpp>
#include <offload/errors.hpp>
#include <offload/executor.hpp>
#include <offload/fmt.hpp>
#include <offload/offloadable.hpp>
#include <offload/placement_policy.hpp>
#include <offload/pth.hpp>
#include <offload/safetensors.hpp>
#include <offload/plan.hpp>
#include <offload/stage.hpp>
#include <offload/stage_scheduler.hpp>
#include <offload/state_dict.hpp>
#include <offload/storage.hpp>
#include <offload/tensor_registry.hpp>
#include <offload/trace.hpp>
#include <offload/units.hpp>
