metadata(description="mcutrain device package: on-device training helpers", version="0.1.0")

package("mcutrain")
