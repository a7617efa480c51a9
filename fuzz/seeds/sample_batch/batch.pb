
packaging-1filler	adapter-0 *&
temperature	!-$`tÙ6@ €€¨±ãŸçË*
pump_run €€¨±ãŸçË*"
countÿÿÿÿÿÿÿÿÿ €€¨±ãŸçË*;
levelıÿÿÿÿÿÿÿÿ"no fresh value for 3s €€¨±ãŸçË*!
serial	*SN-0042 €€¨±ãŸçË*2
pressure"illegal data address €€¨±ãŸçË*1
flow"no response within 1000ms €€¨±ãŸçË