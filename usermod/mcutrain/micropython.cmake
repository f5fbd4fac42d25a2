# CMake-based ports (rp2, esp32): USER_C_MODULES=<repo>/usermod/micropython.cmake
add_library(usermod_mcutrain INTERFACE)

file(GLOB MCUTRAIN_KERNEL_SOURCES ${CMAKE_CURRENT_LIST_DIR}/kernels/*.c)

target_sources(usermod_mcutrain INTERFACE
    ${CMAKE_CURRENT_LIST_DIR}/modmcutrain.c
    ${MCUTRAIN_KERNEL_SOURCES}
)

target_include_directories(usermod_mcutrain INTERFACE
    ${CMAKE_CURRENT_LIST_DIR}
)

target_link_libraries(usermod INTERFACE usermod_mcutrain)
