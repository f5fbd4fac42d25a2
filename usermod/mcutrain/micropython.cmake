# CMake-based ports (rp2, esp32): USER_C_MODULES=<repo>/usermod/micropython.cmake
add_library(usermod_mcutrain INTERFACE)

file(GLOB MCUTRAIN_BINDING_SOURCES ${CMAKE_CURRENT_LIST_DIR}/*.c)
file(GLOB MCUTRAIN_KERNEL_SOURCES ${CMAKE_CURRENT_LIST_DIR}/kernels/*.c)

target_sources(usermod_mcutrain INTERFACE
    ${MCUTRAIN_BINDING_SOURCES}
    ${MCUTRAIN_KERNEL_SOURCES}
)

# The kernels are where the time goes: build them for speed even in size-optimized ports.
set_source_files_properties(${MCUTRAIN_KERNEL_SOURCES} PROPERTIES COMPILE_OPTIONS "-O2")

target_include_directories(usermod_mcutrain INTERFACE
    ${CMAKE_CURRENT_LIST_DIR}
)

target_link_libraries(usermod INTERFACE usermod_mcutrain)
