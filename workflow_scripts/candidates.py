# placeholder until the stage module lands
